"""Entry point of every training process: ``python -m harness.runtime.worker --manifest FILE``.

The manifest (harness/spec/manifest.py) is the one thing a worker is given: the resolved spec,
the MLflow run, the tracking URI and whether to resume.  A SLURM job array's task trains the
point its ``SLURM_ARRAY_TASK_ID`` names; ``--index`` chooses one by hand.

``harness run`` (through horovodrun or the tf launcher), the SLURM scripts (through srun) and
the sweeps start this; users do not call it directly.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from slurm import preemption
from slurm.environment import SlurmEnvironment
from harness.errors import UserError, exit_code_of
from harness.spec import manifest as launch_manifest
from harness.spec.jobs import resolve_job


def _parse(argv):
    parser = argparse.ArgumentParser(prog="harness.runtime.worker")
    parser.add_argument("--manifest", required=True, help="the launch's launch.json")
    parser.add_argument("--index", type=int, default=None,
                        help="the point to train (default: SLURM_ARRAY_TASK_ID, else 0)")
    return parser.parse_args(argv)


def point_index(given: Optional[int], slurm: SlurmEnvironment, points: int) -> int:
    """``--index``, else the array task's index, else the only point."""
    if given is not None:
        return given
    if slurm.array_task_id is not None:
        if not slurm.array_task_id.isdigit():
            raise UserError(f"SLURM_ARRAY_TASK_ID={slurm.array_task_id!r}: not an index")
        return int(slurm.array_task_id)
    if points != 1:
        raise UserError(f"the launch has {points} points: a job array's task trains the one its "
                        "SLURM_ARRAY_TASK_ID names, or pass --index")
    return 0


def main(argv=None) -> int:
    # First: SLURM's warning (or its SIGTERM) may come while TensorFlow still imports.
    slurm = SlurmEnvironment.from_env()
    preemption.install(in_slurm_step=slurm.in_step)
    args = _parse(argv)
    launch = launch_manifest.read(Path(args.manifest))
    point = launch.point(point_index(args.index, slurm, len(launch.points)))
    if launch.tracking_uri:  # every MLflow call of this process goes where the launch said
        os.environ["MLFLOW_TRACKING_URI"] = launch.tracking_uri
    job = resolve_job(point.spec.job, Path(point.spec.spec_path).parent)

    from harness.runtime import session  # imports TensorFlow and Horovod: after the cheap checks

    return session.run_training(launch, point, job)


if __name__ == "__main__":
    sys.exit(exit_code_of(main, bug_traceback=True))
