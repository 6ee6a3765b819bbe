"""A group's points on this machine (``harness sweep --local``, ``harness scale --local``), one
after another or K at a time.

Each point is launched from the group's manifest as ``harness run`` launches a job
(``python -m harness.runtime.launcher MANIFEST --index I``), logging into its child run; its
output goes to ``point-<i>.log`` in the group's folder, or to the terminal (``stream``).  A point
that fails is reported and the others go on.  Points run side by side only when their
processes fit the machine (one per GPU, or one per core without GPUs); otherwise fewer at a
time, and a line says why.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def slots(processes: int, gpus: int) -> int:
    """How many points of ``processes`` processes fit here at once."""
    capacity = gpus if gpus else (os.cpu_count() or 1)
    return max(1, capacity // max(1, processes))


def parallelism(wanted: int, processes: int, gpus: int) -> int:
    fits = slots(processes, gpus)
    if wanted > fits:
        unit = f"{gpus} GPU(s)" if gpus else f"{os.cpu_count()} core(s)"
        print(f"sweep: --max-parallel {wanted}: {wanted} points x {processes} process(es) do not "
              f"fit this machine's {unit}; running {fits} at a time", flush=True)
    return min(wanted, fits)


class PointRunner:
    """Starts points as launcher subprocesses and stops them all on Ctrl-C."""

    def __init__(self, launch, folder: Path, gpus: int = 0, at_once: int = 1,
                 stream: bool = False, label: str = "sweep"):
        self.launch, self.folder, self.stream, self.label = launch, folder, stream, label
        processes = launch.layout_of(0).processes
        # Points side by side on a GPU machine each get GPUs of their own (CUDA_VISIBLE_DEVICES):
        # every point's rank 0 would otherwise pin GPU 0.
        self.gpu_groups: queue.Queue = queue.Queue()
        self.pin_gpus = bool(gpus) and at_once > 1  # one at a time: every GPU is the point's
        for k in range(at_once if gpus else 0):
            self.gpu_groups.put(",".join(str(k * processes + i) for i in range(processes)))
        self.live: set = set()
        self.lock = threading.Lock()
        self.stopping = False

    def command(self, point) -> list[str]:
        return [sys.executable, "-m", "harness.runtime.launcher", str(self.launch.path),
                "--index", str(point.index)]

    def run(self, point) -> tuple[int, float]:
        """(exit code, seconds); the point's lines go to point-<i>.log."""
        log = self.folder / f"point-{point.index}.log"
        env = dict(os.environ)
        gpus = self.gpu_groups.get() if self.pin_gpus else None  # one group per running point
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        try:
            return self._run(point, env, log)
        finally:
            if gpus is not None:
                self.gpu_groups.put(gpus)

    def _run(self, point, env: dict, log: Path) -> tuple[int, float]:
        started = time.monotonic()
        with open(os.devnull if self.stream else log, "w") as out:
            with self.lock:
                if self.stopping:
                    return 130, 0.0
                proc = subprocess.Popen(self.command(point), stdout=None if self.stream else out,
                                        stderr=None if self.stream else subprocess.STDOUT,
                                        env=env, start_new_session=True)
                self.live.add(proc)
            where = "" if self.stream else f"; log {log}"
            print(f"{self.label}: point {point.index} ({point.name}) started{where}", flush=True)
            code = proc.wait()
        with self.lock:
            self.live.discard(proc)
        seconds = time.monotonic() - started
        word = "finished" if code == 0 else f"FAILED (exit {code}; see {'above' if self.stream else log})"
        print(f"{self.label}: point {point.index} ({point.name}) {word} in {seconds:.0f} s", flush=True)
        return code, seconds

    def stop_all(self) -> None:
        """SIGINT to every point's process group, as Ctrl-C in a terminal would send."""
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def run_points(launch, at_once: int, folder: Path, gpus: int = 0, stream: bool = False,
               label: str = "sweep", stop_on_failure: bool = False) -> dict[int, int]:
    """{point index: exit code}; every point runs even when some fail, unless
    ``stop_on_failure`` (a scaling run: a size that fails leaves nothing to compare)."""
    runner = PointRunner(launch, folder, gpus, at_once, stream, label)
    if stop_on_failure:
        codes = {}
        try:
            for point in launch.points:
                codes[point.index] = runner.run(point)[0]
                if codes[point.index] != 0:
                    break
        except KeyboardInterrupt:
            runner.stop_all()
            raise
        return codes
    codes = {}
    pool = ThreadPoolExecutor(max_workers=at_once)
    try:
        futures = {p.index: pool.submit(runner.run, p) for p in launch.points}
        for index, future in futures.items():
            codes[index] = future.result()[0]
    except KeyboardInterrupt:
        runner.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return codes
