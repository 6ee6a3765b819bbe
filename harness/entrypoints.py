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
