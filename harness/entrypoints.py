"""The command lines the harness starts its processes with, in one place.

``harness run`` (through horovodrun), the batch script (through srun or mpirun), the sweeps and
the scaling runs all start the same worker on a launch manifest; the probe has its own entry
point.
"""
from __future__ import annotations

from typing import Optional

WORKER = "harness.runtime.worker"
PREPARE = "harness.runtime.prepare"
FAILURE = "harness.runtime.failure"
PROBE = "harness.scaling.probe"


def worker_command(python: str, manifest: str, index: Optional[int] = None) -> list[str]:
    """``python -m harness.runtime.worker --manifest FILE [--index I]``; without ``--index`` a job
    array's task trains the point its SLURM_ARRAY_TASK_ID names."""
    return [python, "-m", WORKER, "--manifest", manifest] + _index(index)


def prepare_command(python: str, manifest: str, index: Optional[int] = None) -> list[str]:
    """``python -m harness.runtime.prepare --manifest FILE [--index I]``: the job's data, once,
    before the ranks start (a batch script runs it ahead of the step)."""
    return [python, "-m", PREPARE, "--manifest", manifest] + _index(index)


def failure_command(python: str, manifest: str, index: Optional[int] = None) -> list[str]:
    """``python -m harness.runtime.failure --manifest FILE [--index I]``: after a failed step, the
    run names the rank that died first (srun's report), as ``harness run`` does locally."""
    return [python, "-m", FAILURE, "--manifest", manifest] + _index(index)


def _index(index: Optional[int]) -> list[str]:
    """Which point of the manifest; none: the array task's own (SLURM_ARRAY_TASK_ID), or the
    only one."""
    return [] if index is None else ["--index", str(index)]
