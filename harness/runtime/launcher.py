"""Start N local training processes and watch them (``harness run``).

One process runs the worker directly; more go through ``horovodrun --gloo``,
which stops every process as soon as one fails.  The launcher relays rank 0's
lines as they come (other ranks' lines with a ``[rank N]`` prefix) and turns
horovodrun's failure report into one line naming the rank that failed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

RUN_RECORD_ENV = "HARNESS_RUN_RECORD"  # where rank 0 notes its MLflow run for the launcher
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
        return (f"rank {self.rank} on {socket.gethostname()} failed first ({how}); "
                "the other ranks were stopped")


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


def run_processes(processes: int, worker: list[str], controller: str = "gloo",
                  extra_env: Optional[dict] = None) -> int:
    """Run the job; return its exit code (0, 1 for a failed run, 130 when interrupted)."""
    with tempfile.TemporaryDirectory(prefix="harness-run-") as scratch:
        record = Path(scratch) / "run.json"  # rank 0 says here which MLflow run it writes
        env = dict(worker_env(), **(extra_env or {}), **{RUN_RECORD_ENV: str(record)})
        return _watch(launch_command(processes, worker, controller), env, record)


def _watch(cmd: list[str], env: dict, record: Path) -> int:
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
        record_first_failure(record, reason)
        return 1
    return 0


def record_first_failure(record: Path, reason: str) -> None:
    """The run says which rank failed first, where and how (not rank 0's later error)."""
    try:
        run = json.loads(record.read_text())
    except (OSError, ValueError):
        return  # rank 0 never opened a run (failed early, or tracking is off)
    from tracking.run import mark_failed
    mark_failed(run["run_id"], run["uri"], reason)
