"""Start N local training processes and watch them (``harness run``, local sweeps and scaling).

One process runs the worker directly.  With the Horovod engine more go through
``horovodrun --gloo`` (its rendezvous joins them); with the tf engine the launcher starts the N
workers itself, each with its ``TF_CONFIG``.  One supervisor watches either: it relays rank 0's
lines as they come (other ranks' lines with a ``[rank N]`` prefix), stops every process as soon
as one fails, handles Ctrl-C, and says in one line which rank failed first.
"""
from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from harness import engines
from harness.engines import python_for
from harness.entrypoints import worker_command
from harness.errors import UserError
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
    refusal: Optional[str] = None  # the first rank's "error: ..." line (bad input, exit 2)

    def refused(self, text: str) -> bool:
        """A rank's one-line refusal is kept for stderr (every rank may say it), not relayed."""
        if not text.startswith("error: "):
            return False
        self.refusal = self.refusal or text
        return True

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


def relay(line: str, report: FailureReport, out=None) -> None:
    """Print a process's line: rank 0 as is, other ranks prefixed, horovodrun's own as is."""
    out = out or sys.stdout
    m = _PREFIX.match(line)
    if m is None:
        report.feed(line)
        if line.strip() and not report.in_launcher_traceback:
            print(line, file=out, flush=True)
        return
    rank, text = int(m.group(1)), m.group(3)
    if report.refused(text):
        return
    print(text if rank == 0 else f"[rank {rank}] {text}", file=out, flush=True)


def launch(manifest: Manifest, index: int = 0, extra_env: Optional[dict] = None) -> int:
    """Train point ``index`` of a written manifest on this machine; its exit code.  A run the
    launch left to create (``launches.RUN_PENDING``) is created while the processes start."""
    from harness.runtime.launches import RUN_PENDING, PendingRun
    point = manifest.point(index)
    worker = worker_command(python_for(manifest.engine), str(manifest.path), index)
    if point.run_id is None and manifest.options.get(RUN_PENDING):
        pending = PendingRun(manifest, index)
        run = RunOf(pending.result, manifest.tracking_uri, lambda: pending.error)
    else:
        run = RunOf(lambda: point.run_id, manifest.tracking_uri) if point.run_id else None
    if run is not None:
        run, journal_env = shipping_journal(manifest, index, run)
        extra_env = {**(extra_env or {}), **journal_env}
    return run_processes(manifest.layout_of(index).processes, worker, extra_env=extra_env,
                         engine=manifest.engine, run=run)


def shipping_journal(manifest: Manifest, index: int, run: "RunOf") -> tuple["RunOf", dict]:
    """Rank 0 journals its tracking calls and this process ships them into the run (MLflow is
    loaded here already; rank 0 then never imports it: tracking/journal.py).  The run to report
    to, now settled through the shipper, and the environment that tells rank 0 where."""
    from tracking.journal import JOURNAL_ENV
    from tracking.shipper import JournalShipper
    point = manifest.point(index)
    shipper = JournalShipper.fresh(manifest.path.parent / f"journal-{index}", run.run_id, run.uri,
                                   point.spec.checkpoint_dir.parent, resumed=bool(point.run_id))
    shipper.start()
    return replace(run, settle=shipper.settle), {JOURNAL_ENV: str(shipper.folder)}


@dataclass(frozen=True)
class RunOf:
    """The MLflow run a launch reports to: its id when asked (it may still be being created),
    and what went wrong creating it (the supervisor then stops the processes)."""
    run_id: Callable[[], Optional[str]]
    uri: str
    error: Callable[[], Optional[BaseException]] = lambda: None
    # Every process has exited: what rank 0 journaled reaches the run; one it never finished is
    # marked with the status given (None: left for the launcher's own word on a failure).
    settle: Callable[[Optional[str]], None] = lambda unfinished_status=None: None


def run_processes(processes: int, worker: list[str], controller: str = "gloo",
                  extra_env: Optional[dict] = None, engine: str = engines.DEFAULT,
                  run: Optional[RunOf] = None) -> int:
    """Run the job; return its exit code (0, 1 for a failed run, 130 when interrupted).
    ``run``: the MLflow run that is told which rank failed first."""
    env = dict(worker_env(), **(extra_env or {}))
    if engines.info(engine).local_join == "tf_config" and processes > 1:
        children = [Child(worker, worker_envs, rank)
                    for rank, worker_envs in enumerate(tf_worker_envs(processes, env))]
    else:  # horovodrun starts the ranks (or one process runs alone) and prefixes their lines
        children = [Child(launch_command(processes, worker, controller), env, None)]
    return Supervisor(children).run(run)


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


STOP_GRACE_S = 5.0  # after a rank fails, the others get SIGTERM, then SIGKILL after this
INTERRUPT_GRACE_S = 30.0  # Ctrl-C: time for every rank to mark the run KILLED and exit


@dataclass(frozen=True)
class Child:
    """A process the supervisor starts: one rank (``rank``), or a launcher of ranks whose lines
    carry a ``[rank]`` prefix and that reports the first failure itself (``rank`` None:
    horovodrun, or a single process)."""
    command: list
    env: dict
    rank: Optional[int]


class Supervisor:
    """The one local supervisor, for both engines: it starts the children, relays their lines
    (rank 0's as they are, others' prefixed ``[rank N]``), and when one fails stops the rest
    (SIGTERM, SIGKILL after STOP_GRACE_S: a rank blocked in a collective with a dead peer ignores
    SIGTERM) and says in one line which rank failed first.  Ctrl-C, or SIGTERM or SIGHUP to the
    supervisor, stops them all."""

    def __init__(self, children: list[Child]):
        self.children = children
        self.report = FailureReport()
        self.failed_at: Optional[float] = None
        self.failed_code: Optional[int] = None

    def run(self, run: Optional[RunOf]) -> int:
        procs = [subprocess.Popen(c.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=c.env, start_new_session=True, bufsize=1)
                 for c in self.children]
        lines: queue.Queue = queue.Queue()
        for i, proc in enumerate(procs):
            threading.Thread(target=_pump, args=(i, proc, lines), daemon=True).start()
        with sigterm_as_interrupt():
            try:
                stopped_s = self._watch(procs, lines, run.error if run else lambda: None)
                if run is not None:
                    run.settle(None)
                if self.report.refusal:  # held back from the relay: said once, on stderr
                    print(self.report.refusal, file=sys.stderr, flush=True)
            except KeyboardInterrupt as stop:
                _terminate_all(procs, grace_s=INTERRUPT_GRACE_S)
                if run is not None:
                    run.settle("KILLED")
                signum = stop.signum if isinstance(stop, Terminated) else signal.SIGINT
                how = f"terminated ({signal.Signals(signum).name})" \
                    if signum != signal.SIGINT else "interrupted"
                with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                    print(f"{how}: the run is marked KILLED; resume with --resume",
                          file=sys.stderr)
                return 128 + signum
        if self.failed_at is None:
            return 0
        code = self.report.code if self.report.code is not None else self.failed_code
        if code == UserError.exit_code:  # a rank refused its input and said why: so does the run
            return UserError.exit_code
        reason = self.report.describe(self.failed_code)
        if len(procs) > 1:  # the supervisor stopped the others itself: say how fast
            reason = reason.replace("were stopped", f"were stopped within {stopped_s:.1f} s")
        print(f"run failed: {reason}", file=sys.stderr, flush=True)
        record_first_failure(run, reason, self.report.rank)
        return 1

    def _watch(self, procs: list, lines: queue.Queue, run_error: Callable) -> float:
        """Relay lines until every child has ended; seconds from the first failure to the end.
        When creating the run failed (``run_error``), stop them all and raise that."""
        open_streams, stopped_s = len(procs), 0.0
        while open_streams or any(p.poll() is None for p in procs):
            error = run_error()
            if error is not None:
                _terminate_all(procs, grace_s=STOP_GRACE_S)
                raise error
            try:
                child, line = lines.get(timeout=0.1)
                if line is None:
                    open_streams -= 1
                else:
                    self._relay(self.children[child], line)
            except queue.Empty:
                pass
            if self.failed_at is None:
                self._note_first_failure(procs)
            elif not stopped_s:
                stopped_s = self._stop_others(procs)
        return stopped_s or (time.monotonic() - self.failed_at if self.failed_at else 0.0)

    def _relay(self, child: Child, line: str) -> None:
        if child.rank is None:
            relay(line, self.report)
        elif not self.report.refused(line):
            print(line if child.rank == 0 else f"[rank {child.rank}] {line}", flush=True)

    def _note_first_failure(self, procs: list) -> None:
        for child, proc in zip(self.children, procs):
            code = proc.poll()
            if code in (None, 0):
                continue
            self.failed_at, self.failed_code = time.monotonic(), code
            if child.rank is not None:  # a launcher child has said which rank in its lines
                self.report.rank, self.report.code = child.rank, code
            for other in procs:
                if other.poll() is None:
                    _signal_group(other, signal.SIGTERM)
            return

    def _stop_others(self, procs: list) -> float:
        """Seconds from the first failure until every child had exited (0 while some run)."""
        if all(p.poll() is not None for p in procs):
            return time.monotonic() - self.failed_at
        if time.monotonic() - self.failed_at > STOP_GRACE_S:
            for proc in procs:
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGKILL)
        return 0.0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP to the supervisor, handled as Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# A plain `kill`, a machine shutting down; the terminal closing (an SSH session that drops).
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the children run, SIGTERM or SIGHUP raises Terminated in the main thread, once: the
    children, in sessions of their own, are stopped with the run marked KILLED (and what rank 0
    journaled shipped) instead of being left running, untracked, when the supervisor dies.  A
    second signal while they are being stopped is ignored.  (To keep a job running after the
    terminal closes, start it with nohup or in tmux/screen, or submit it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = []

    def on_signal(signum, frame):
        if not seen:
            seen.append(signum)
            raise Terminated(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _pump(index: int, proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put((index, line.rstrip("\n")))
    lines.put((index, None))


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


def record_first_failure(run: Optional[RunOf], reason: str, rank: Optional[int]) -> None:
    """The run says which rank failed first, where and how (not rank 0's later error)."""
    if run is None:
        return  # tracking is off for this launch
    from tracking.run import mark_failed
    mark_failed(run.run_id(), run.uri, reason, rank)


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
