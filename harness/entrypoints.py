"""The command lines the harness starts its processes with, in one place.

``harness run`` (through horovodrun), the batch script (through srun or mpirun) and the
scaling sweep all start the same worker; the probe has its own entry point.
"""
from __future__ import annotations

from typing import Sequence

WORKER = "harness.runtime.worker"
PROBE = "harness.scaling.probe"


def worker_command(python: str, spec_path: str, overrides: Sequence[str] = (),
                   resume: bool = False) -> list[str]:
    """``python -m harness.runtime.worker SPEC [--set k=v ...] [--resume]``."""
    cmd = [python, "-m", WORKER, spec_path]
    for override in overrides:
        cmd += ["--set", override]
    return cmd + (["--resume"] if resume else [])


def sweep_worker_command(python: str, points_file: str) -> list[str]:
    """A sweep's array task: its point (spec and MLflow run) comes from the points file by
    SLURM_ARRAY_TASK_ID; ``--resume`` as every batch job, so a requeued task continues."""
    return [python, "-m", WORKER, "--sweep-points", points_file, "--resume"]
