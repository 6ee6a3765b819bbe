"""Which rank failed first, where, and how: one sentence, the same locally and under SLURM.

Locally the launcher learns it from horovodrun (or from the workers it watches itself).  Under
SLURM the batch script asks this module once the job step has ended badly and was not
requeued: ``srun`` writes ``srun: error: HOST: task N: Exited with exit code C`` (or ``Killed``,
or ``Terminated``) to the job's error file, and the first such line names the rank that died
first.  The run's ``failure_reason`` then says that, not rank 0's later "lost peer" error.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

SRUN_TASK_ERROR = re.compile(r"^srun: error: (?P<host>[^:\s]+): tasks? (?P<ranks>[\d,\-]+): "
                             r"(?P<what>.+?)\s*$")
SIGNALS = {"Killed": 9, "Terminated": 15, "Aborted": 6, "Segmentation fault": 11}


def sentence(rank: int, host: str, how: str, stopped: str = "were stopped") -> str:
    return f"rank {rank} on {host} failed first ({how}); the other ranks {stopped}"


def how_from_srun(what: str) -> str:
    """srun's words for a task's end, as the local launcher says it."""
    m = re.match(r"Exited with exit code (\d+)", what)
    if m:
        return f"exit code {m.group(1)}"
    for word, signum in SIGNALS.items():
        if what.startswith(word):
            return f"killed by signal {signum}"
    return what


def first_failed_task(stderr_text: str) -> Optional[tuple[int, str, str]]:
    """(rank, host, how) from the first srun task error, None when there is none."""
    for line in stderr_text.splitlines():
        m = SRUN_TASK_ERROR.match(line.strip())
        if m:
            rank = int(re.split(r"[,\-]", m["ranks"])[0])
            return rank, m["host"], how_from_srun(m["what"])
    return None


def job_stderr(job_id: str) -> Optional[Path]:
    """The job's error file, from SLURM's record (scontrol show job)."""
    done = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    m = re.search(r"\bStdErr=(\S+)", done.stdout)
    return Path(m.group(1)) if m else None


def main(argv=None) -> int:
    """``python -m harness.runtime.failure --manifest FILE --status S``: the batch script's last
    word on a step that failed; marks the run with the first rank that died."""
    import os
    from harness.spec import manifest as launch_manifest
    from harness.runtime.worker import point_index
    from slurm.environment import SlurmEnvironment
    parser = argparse.ArgumentParser(prog="harness.runtime.failure")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--index", type=int, default=None)
    parser.add_argument("--status", default="")
    args = parser.parse_args(argv)
    slurm = SlurmEnvironment.from_env()
    launch = launch_manifest.read(Path(args.manifest))
    point = launch.point(point_index(args.index, slurm, len(launch.points)))
    path = job_stderr(os.environ.get("SLURM_JOB_ID", ""))
    found = first_failed_task(path.read_text(errors="replace")) if path and path.is_file() else None
    if found is None or not (point.run_id and launch.tracking_uri):
        return 0
    reason = sentence(*found, stopped="were stopped by srun")
    print(f"harness: run failed: {reason}", file=sys.stderr, flush=True)
    from tracking.run import mark_failed
    mark_failed(point.run_id, launch.tracking_uri, reason, rank=found[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
