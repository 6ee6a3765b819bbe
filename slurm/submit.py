"""``harness submit``: validate a job for the cluster, render its script, and queue it.

Every check runs before anything is written or submitted; each failure is one
line naming the field and what would work (exit 2).  The script lands beside
the job's logs only once SLURM has accepted the job.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from slurm.cluster import Cluster, Partition, check_fit
from harness import engines
from harness.engines import DEFAULT as DEFAULT_ENGINE
from harness.errors import UserError
from harness.files import REPO, atomic_write_text
from slurm.preemption import LEAD_S as SIGNAL_LEAD_S
from harness.spec.schema import JobSpec

MIN_WORK_S = 60  # time to train at all once the warning's lead time is taken off the limit


@dataclass(frozen=True)
class Submission:
    spec: JobSpec
    partition: str
    script: str  # trains the launch in ``launch_folder``, never the YAML the user may edit later
    log_dir: Path
    tracking_uri: str
    launch_folder: Path  # runs/<name>/launches/<digest>: the manifest and the job file's copy


def prepare(spec: JobSpec, cluster: Cluster, uri: str,
            epoch_estimate: Optional[tuple[float, str]], extra: Mapping[str, Optional[str]],
            script: str, launch_folder: Path) -> Submission:
    """Every check of the job and its rendered script (nothing written yet).

    The caller has checked the checkpoint (``--resume``) and the tracking side: ``uri`` is where
    the job will log (already reachable) and ``epoch_estimate`` (seconds per epoch, run id) an
    earlier run's epoch time.  ``extra`` holds ``--sbatch`` options.
    """
    partition = check_job(spec, cluster, uri, epoch_estimate)
    log_dir = (Path.cwd() / "runs" / spec.name / "slurm").resolve()
    return Submission(spec, partition, script, log_dir, uri, launch_folder)


def check_job(spec: JobSpec, cluster: Cluster, uri: str,
              epoch_estimate: Optional[tuple[float, str]] = None) -> str:
    """Every check a job passes before it is queued; its partition."""
    partition, part = check_fit(spec.resources, cluster)
    check_time(spec)
    check_tracking_uri(spec, uri)
    check_launch(part, spec.training.engine)
    check_checkpoint_interval(spec, epoch_estimate)
    return partition


def check_time(spec: JobSpec) -> None:
    needed = SIGNAL_LEAD_S + MIN_WORK_S
    if spec.resources.time_seconds < needed:
        raise UserError(
            f"resources.time={spec.resources.time!r}: SLURM warns {SIGNAL_LEAD_S} s before the limit "
            f"to leave time for the checkpoint, so the job needs at least {needed // 60} minutes; "
            f"ask for --time {needed // 60}:00 or more")


def check_tracking_uri(spec: JobSpec, uri: str) -> None:
    """SQLite (or a plain folder) on a shared filesystem breaks under writers on several nodes."""
    if spec.resources.nodes > 1 and not uri.startswith(("http://", "https://", "postgresql", "mysql")):
        raise UserError(
            f"MLFLOW_TRACKING_URI={uri}: a local SQLite file or folder is refused for a "
            f"{spec.resources.nodes}-node job (SQLite on a shared filesystem corrupts when several "
            "nodes write); start a server on the head node (harness tracking serve --host 0.0.0.0) "
            "and export MLFLOW_TRACKING_URI=http://HEAD-NODE:5000")


def check_launch(part: Partition, engine: str = DEFAULT_ENGINE) -> None:
    """The job's engine has its environment in the checkout the job runs from; an engine that
    joins its ranks through MPI (srun --mpi=pmix/pmi2, mpirun) is built with MPI."""
    e = engines.info(engine)
    python = Path(engines.venv_python(engine, REPO))
    if not python.exists():
        raise UserError(f"training.engine={engine}: {python} not found; create the engine's "
                        f"environment with `{e.setup}` (on a shared filesystem)")
    if e.joins_over_mpi and not engines.mpi_linked(engine):
        raise UserError(
            f"launch={part.launch}: the partition starts ranks through MPI, but this {engine} is "
            "built without MPI (horovodrun --check-build shows [ ] MPI); rebuild it with "
            "HOROVOD_WITH_MPI=1 (make setup does, when mpicc is installed)")


def check_checkpoint_interval(spec: JobSpec, estimate: Optional[tuple[float, str]]) -> None:
    """The first checkpoint must come before the warning, or the job can never make progress."""
    if estimate is None:
        return
    epoch_s, run_id = estimate
    budget = spec.resources.time_seconds - SIGNAL_LEAD_S
    every = spec.checkpoint.every_epochs
    if epoch_s > budget:
        raise UserError(
            f"resources.time={spec.resources.time!r}: one epoch took {epoch_s:.0f} s in run "
            f"{run_id[:8]}, more than the {budget} s before SLURM's warning; a requeued job "
            "would never finish an epoch. Ask for more time")
    if every * epoch_s > budget:
        fits = max(1, int(budget // epoch_s))
        print(f"note: checkpoint.every_epochs={every} at ~{epoch_s:.0f} s per epoch (run "
              f"{run_id[:8]}) is longer than the {budget} s before the warning; a preemption "
              f"checkpoints the last finished epoch anyway, but every_epochs<={fits} keeps a "
              "crash's loss within the allocation", file=sys.stderr)


def test_only(script_path: Path) -> Optional[str]:
    """`sbatch --test-only`: None if SLURM would accept the job, else its reason."""
    done = subprocess.run(["sbatch", "--test-only", str(script_path)], capture_output=True, text=True)
    return None if done.returncode == 0 else _sbatch_reason(done)


def _sbatch_reason(done: subprocess.CompletedProcess) -> str:
    """sbatch's last error line, without its prefix."""
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or [f"exit {done.returncode}"]
    return lines[-1].replace("sbatch: error: ", "")


def dry_run(sub: Submission) -> None:
    """Print the script; test it with sbatch --test-only where there is an sbatch."""
    if shutil.which("sbatch") is None:
        print(sub.script, end="")
        print("dry run: nothing submitted (sbatch not found: not tested)", file=sys.stderr)
        return
    accepted_by_slurm(sub)
    print(sub.script, end="")
    print("dry run: nothing submitted (SLURM would accept it)", file=sys.stderr)


def accepted_by_slurm(sub: Submission) -> None:
    """`sbatch --test-only` of the script, or exit 2 with SLURM's reason."""
    if shutil.which("sbatch") is None:
        raise UserError("sbatch: not found; this is not a SLURM login node. `harness render` "
                        "prints the script, `harness run` trains on this machine")
    with tempfile.TemporaryDirectory(prefix="harness-submit-") as scratch:
        pending = Path(scratch) / f"{sub.spec.name}.sbatch"
        pending.write_text(sub.script)
        refused = test_only(pending)
    if refused:
        raise UserError(f"sbatch --test-only refused {sub.spec.name} on partition "
                        f"{sub.partition}: {refused}")


def queue_script(sub: Submission, manifest: Path) -> str:
    """Queue the job (its launch is written); keep its script and record beside the logs."""
    sub.log_dir.mkdir(parents=True, exist_ok=True)  # SLURM opens the logs here
    with tempfile.TemporaryDirectory(prefix="harness-submit-") as scratch:
        pending = Path(scratch) / f"{sub.spec.name}.sbatch"
        pending.write_text(sub.script)
        job_id = queue(pending)
        script = sub.log_dir / f"{sub.spec.name}-{job_id}.sbatch"
        shutil.move(pending, script)
    record(sub, job_id, script, manifest)
    return job_id


def queue(script: Path, sbatch_args: Sequence[str] = ()) -> str:
    """`sbatch --parsable [ARGS] SCRIPT`: the job id."""
    done = subprocess.run(["sbatch", "--parsable", *sbatch_args, str(script)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise UserError(f"sbatch refused the job: {_sbatch_reason(done)}")
    return done.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def record(sub: Submission, job_id: str, script: Path, manifest: Path) -> None:
    """What `harness status` needs once SLURM has forgotten the job."""
    atomic_write_text(sub.log_dir / f"{job_id}.json", json.dumps({
        "job_id": job_id, "name": sub.spec.name, "spec": sub.spec.spec_path, "manifest": str(manifest),
        "script": str(script), "log_dir": str(sub.log_dir), "tracking_uri": sub.tracking_uri,
        "experiment": sub.spec.experiment, "epochs": sub.spec.training.epochs,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=1))


def print_submitted(sub: Submission, job_id: str, run_id: Optional[str] = None) -> None:
    r = sub.spec.resources
    print(f"submitted job {job_id}: {sub.spec.name} on {sub.partition}, {r.nodes} node(s) x "
          f"{r.gpus_per_node} process(es), time limit {r.time}")
    print(f"script:   {sub.log_dir / f'{sub.spec.name}-{job_id}.sbatch'}")
    print(f"launch:   {sub.launch_folder} (the resolved spec and a copy of the job file: later "
          "edits do not reach this job)")
    print(f"logs:     {sub.log_dir / f'{sub.spec.name}-{job_id}.out'} (and .err)")
    run = f"run {run_id}" if run_id else "its run"
    print(f"mlflow:   {sub.tracking_uri}, experiment {sub.spec.experiment!r}, "
          f"{run} tagged slurm.job_id={job_id}")
    print(f"follow:   harness status {job_id}")
