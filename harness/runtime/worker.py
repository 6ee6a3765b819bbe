"""Entry point of every training process: ``python -m harness.runtime.worker SPEC [--set k=v] [--resume]``.

A sweep's array task runs ``python -m harness.runtime.worker --sweep-points FILE --resume``:
its point's frozen spec and MLflow child run come from the points file, by its task id.

``harness run`` (through horovodrun) and the SLURM scripts (through srun)
start this; users do not call it directly.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from slurm import preemption
from slurm.environment import SlurmEnvironment
from harness.errors import exit_code_of
from harness.spec.jobs import resolve_job
from harness.spec import sweep_points
from harness.spec.loader import load_spec


def _parse(argv):
    parser = argparse.ArgumentParser(prog="harness.runtime.worker")
    parser.add_argument("spec", nargs="?")
    parser.add_argument("--sweep-points", default="", help="a sweep's points.json (array tasks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    # First: SLURM's warning (or its SIGTERM) may come while TensorFlow still imports.
    preemption.install(in_slurm_step=SlurmEnvironment.from_env().in_step)
    args = _parse(argv)
    spec_path = args.spec
    if args.sweep_points:
        point = sweep_points.point_of_task(Path(args.sweep_points))
        spec_path = point["spec"]
        os.environ["MLFLOW_RUN_ID"] = point["run_id"]  # the point's child run, every attempt
    spec = load_spec(spec_path, args.overrides)
    job = resolve_job(spec.job, Path(spec.spec_path).parent)

    from harness.runtime import session  # imports TensorFlow and Horovod: after the cheap checks

    return session.run_training(spec, job, resume=args.resume)


if __name__ == "__main__":
    sys.exit(exit_code_of(main, bug_traceback=True))
