"""Start N local training processes and watch them (``harness run``, local sweeps and scaling).

One process runs the worker directly.  With the Horovod engine more go through
``horovodrun --gloo``, which stops every process as soon as one fails; with the tf
engine the launcher starts the N workers itself, each with its ``TF_CONFIG``, and
stops the others as soon as one fails.  Either way it relays rank 0's lines as
they come (other ranks' lines with a ``[rank N]`` prefix) and says in one line
which rank failed first.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from harness import engines
from harness.engines import python_for
from harness.entrypoints import worker_command
from harness.runtime.failure import sentence
from harness.spec.manifest import Manifest
_PREFIX = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:(.*)$")  # gloo [1], mpirun [1,0]
_FIRST_FAILED = re.compile(r"^Process name: \S*?(\d+)\]?\s*$")
_FAILED_CODE = re.compile(r"^Exit code: (-?\d+)")


def launch_command(processes: int, worker: list[str], controller: str = "gloo") -> list[str]:
    """horovodrun on localhost; ``controller`` gloo (default) or mpi (mpirun underneath)."""
    if processes == 1 and controller == "gloo":
        return worker
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    return [horovodrun, f"--{controller}", "-np", str(processes), "-H", f"localhost:{processes}",
            *worker]


def worker_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class FailureReport:
    """What horovodrun said about the first process to fail."""

    rank: Optional[int] = None
    code: Optional[int] = None
    in_launcher_traceback: bool = False  # horovodrun's own RuntimeError: we say it in one line

    def feed(self, line: str) -> None:
        if line.startswith("Traceback"):
            self.in_launcher_traceback = True
        if (m := _FIRST_FAILED.match(line)) and self.rank is None:
            self.rank = int(m.group(1))
        elif (m := _FAILED_CODE.match(line)) and self.code is None:
            self.code = int(m.group(1))

    def describe(self, returncode: int) -> str:
        if self.rank is None:
            return f"training exited with code {returncode}"
        code = self.code if self.code is not None else returncode
        # horovodrun starts each rank through `sh -c`, which reports death by signal N as 128+N.
        signum = -code if code < 0 else code - 128 if code > 128 else None
        how = f"killed by signal {signum}" if signum else f"exit code {code}"
        # Local processes: every rank runs on this host.
        return sentence(self.rank, socket.gethostname(), how)


def relay(line: str, report: FailureReport, out=sys.stdout) -> None:
    """Print a process's line: rank 0 as is, other ranks prefixed, horovodrun's own as is."""
    m = _PREFIX.match(line)
    if m is None:
        report.feed(line)
        if line.strip() and not report.in_launcher_traceback:
            print(line, file=out, flush=True)
        return
    rank, text = int(m.group(1)), m.group(3)
    print(text if rank == 0 else f"[rank {rank}] {text}", file=out, flush=True)


def launch(manifest: Manifest, index: int = 0, extra_env: Optional[dict] = None) -> int:
    """Train point ``index`` of a written manifest on this machine; its exit code."""
    point = manifest.point(index)
    worker = worker_command(python_for(manifest.engine), str(manifest.path), index)
    run = (point.run_id, manifest.tracking_uri) if point.run_id else None
    return run_processes(manifest.layout_of(index).processes, worker, extra_env=extra_env,
                         engine=manifest.engine, run=run)


def run_processes(processes: int, worker: list[str], controller: str = "gloo",
                  extra_env: Optional[dict] = None, engine: str = engines.DEFAULT,
                  run: Optional[tuple] = None) -> int:
    """Run the job; return its exit code (0, 1 for a failed run, 130 when interrupted).
    ``run`` (run id, tracking URI): the MLflow run that is told which rank failed first."""
    env = dict(worker_env(), **(extra_env or {}))
    if engines.info(engine).local_join == "tf_config" and processes > 1:
        return _watch_workers(worker, tf_worker_envs(processes, env), run)
    return _watch(launch_command(processes, worker, controller), env, run)


def free_ports(count: int) -> list[int]:
    """Ports the OS calls free now (bound together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_worker_envs(processes: int, env: dict) -> list[dict]:
    """One environment per worker: the same cluster in TF_CONFIG, each its own task index."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(processes)]}
    return [dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": i}}))
            for i in range(processes)]


STOP_GRACE_S = 5.0  # after a worker fails, the others get SIGTERM, then SIGKILL after this


def _watch_workers(worker: list[str], envs: list[dict], run: Optional[tuple]) -> int:
    """Start one process per rank, relay their lines, stop them all when one fails."""
    procs = [subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, start_new_session=True, bufsize=1) for env in envs]
    lines: queue.Queue = queue.Queue()
    for rank, proc in enumerate(procs):
        threading.Thread(target=_pump, args=(rank, proc, lines), daemon=True).start()
    report, failed_at, stopped = FailureReport(), None, None
    try:
        open_streams = len(procs)
        while open_streams or any(p.poll() is None for p in procs):
            try:
                rank, line = lines.get(timeout=0.1)
                if line is None:
                    open_streams -= 1
                else:
                    print(line if rank == 0 else f"[rank {rank}] {line}", flush=True)
            except queue.Empty:
                pass
            if failed_at is None:
                failed_at = _first_failure(procs, report)
            elif stopped is None:
                stopped = _stop_others(procs, failed_at)
    except KeyboardInterrupt:
        _terminate_all(procs, grace_s=30.0)
        print("interrupted: the run is marked KILLED; resume with --resume", file=sys.stderr)
        return 130
    if failed_at is None:
        return 0
    if stopped is None:
        stopped = time.monotonic() - failed_at
    reason = report.describe(report.code)
    if stopped is not None:
        reason = reason.replace("were stopped", f"were stopped within {stopped:.1f} s")
    print(f"run failed: {reason}", file=sys.stderr, flush=True)
    record_first_failure(run, reason, report.rank)
    return 1


def _pump(rank: int, proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put((rank, line.rstrip("\n")))
    lines.put((rank, None))


def _first_failure(procs: list, report: FailureReport) -> Optional[float]:
    """The time the first rank failed (noted in ``report``), None while all are fine."""
    for rank, proc in enumerate(procs):
        code = proc.poll()
        if code not in (None, 0):
            report.rank, report.code = rank, code
            for other in procs:
                if other.poll() is None:
                    _signal_group(other, signal.SIGTERM)
            return time.monotonic()
    return None


def _stop_others(procs: list, failed_at: float) -> Optional[float]:
    """Seconds from the first failure until every rank had exited (None while some run)."""
    if all(p.poll() is not None for p in procs):
        return time.monotonic() - failed_at
    if time.monotonic() - failed_at > STOP_GRACE_S:
        for proc in procs:  # a rank blocked in a collective with a dead peer ignores SIGTERM
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
    return None


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _terminate_all(procs: list, grace_s: float) -> None:
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)


def _watch(cmd: list[str], env: dict, run: Optional[tuple]) -> int:
    report = FailureReport()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, bufsize=1)
    try:
        for line in proc.stdout:
            relay(line.rstrip("\n"), report)
        returncode = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C: let every process mark the run KILLED and exit, then make sure they are gone.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        print("interrupted: the run is marked KILLED; resume with --resume", file=sys.stderr)
        return 130
    if returncode != 0:
        reason = report.describe(returncode)
        print(f"run failed: {reason}", file=sys.stderr, flush=True)
        record_first_failure(run, reason, report.rank)
        return 1
    return 0


def record_first_failure(run: Optional[tuple], reason: str, rank: Optional[int]) -> None:
    """The run says which rank failed first, where and how (not rank 0's later error)."""
    if run is None:
        return  # tracking is off for this launch
    from tracking.run import mark_failed
    mark_failed(run[0], run[1], reason, rank)


def main(argv=None) -> int:
    """``python -m harness.runtime.launcher MANIFEST [--index I]``: what a local sweep starts
    for each point, so every point is launched, watched and reported as ``harness run`` is."""
    from harness.errors import exit_code_of
    from harness.spec import manifest as launch_manifest
    parser = argparse.ArgumentParser(prog="harness.runtime.launcher")
    parser.add_argument("manifest")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    return exit_code_of(lambda: launch(launch_manifest.read(Path(args.manifest)), args.index))


if __name__ == "__main__":
    sys.exit(main())
