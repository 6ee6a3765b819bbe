"""Writing a launch: the manifest written before any process starts, and its run (created
first for a batch job; for ``harness run``, by the launcher while the processes start).

``run`` (``local``), ``render`` and ``submit`` (``render_batch`` / ``submit_batch``) write their
launches here; sweeps and scaling runs write one manifest for their group (harness/group/).  A launch folder is
``runs/<name>/launches/<digest>/``: the digest is the launch's content without its run ids, so
``harness render`` and ``harness submit`` of the same job name the same folder and print the
same script.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Mapping, Optional

from harness.errors import UserError
from harness.files import REPO
from harness.spec import manifest as launch_manifest
from harness.spec.manifest import Layout, Manifest, Point
from harness.spec.schema import JobSpec

ACTIVE = ("SCHEDULED", "RUNNING")


def launch_folder(spec: JobSpec, launch: Manifest) -> Path:
    return (Path.cwd() / "runs" / spec.name / "launches" / launch_manifest.digest(launch)).resolve()


def local(spec: JobSpec, processes: int, resume: bool, run_id: Optional[str] = None,
          uri: Optional[str] = None) -> Manifest:
    """``harness run``: a written manifest for ``processes`` local processes and its run
    (``run_id``, the resumed one; else the launcher creates one while the processes start: the
    manifest says so, ``RUN_PENDING``).  ``uri``: where tracking goes, if the caller has
    already asked (``tracking.run.launch_uri``)."""
    from tracking.run import launch_uri
    uri = launch_uri(spec) if uri is None else uri
    pending = {RUN_PENDING: True} if uri and run_id is None else {}
    launch = launch_manifest.new("run", [Point(0, spec, run_id if uri else None)],
                                 Layout(processes), uri, resume, options=pending)
    return launch_manifest.write(launch, launch_folder(spec, launch))


# A launch whose run the launcher creates while its processes start: creating it imports
# MLflow and its SQL store, seconds of CPU that used to come before the first process started.
RUN_PENDING = "run_created_while_starting"
RUN_WAIT_S = 600.0  # rank 0 waits this long for the launcher's run before it gives up on it


class PendingRun:
    """The launch's run, created on a thread of the launcher; once it exists its id is written
    into the manifest, where rank 0 (``wait_for_run``) reads it."""

    def __init__(self, launch: Manifest, index: int = 0):
        self.launch, self.index = launch, index
        self.run_id: Optional[str] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._create, name="create-run", daemon=True)
        self._thread.start()

    def _create(self) -> None:
        from tracking.run import create_job_run
        try:
            run_id = create_job_run(self.launch.point(self.index).spec, "LOCAL", "RUNNING")
            launch_manifest.write(launch_manifest.with_run_ids(self.launch, {self.index: run_id}),
                                  self.launch.path.parent)
            self.run_id = run_id
        except BaseException as e:  # the supervisor stops the processes and says why
            self.error = e

    def result(self) -> Optional[str]:
        """The run's id once it exists; raises what creating it raised."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.run_id


def wait_for_run(path: Path, index: int = 0, timeout_s: float = RUN_WAIT_S) -> str:
    """Rank 0, on its tracking thread: the run id the launcher writes into the manifest."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_id = launch_manifest.run_id_of(path, index)
        if run_id:
            return run_id
        time.sleep(0.2)
    raise RuntimeError(f"{path}: the launcher wrote no run id within {timeout_s:.0f} s")


def batch_uri(spec: JobSpec) -> str:
    from tracking.run import tracking_uri
    return tracking_uri() if spec.tracking.enabled else ""


def batch_manifest(spec: JobSpec, uri: str) -> Manifest:
    """A batch job's launch, not yet written: it always resumes (a requeue continues)."""
    r = spec.resources
    return launch_manifest.new("submit", [Point(0, spec)], Layout(r.nodes * r.gpus_per_node, r.nodes),
                               uri, True)


def batch_script(spec: JobSpec, cluster, launch: Manifest, folder: Path, extra: Mapping) -> str:
    from slurm.render import render_sbatch
    return render_sbatch(spec, cluster, REPO, log_dir(spec), folder / launch_manifest.FILE_NAME,
                         launch.tracking_uri, workdir=Path.cwd(), extra=extra)


def log_dir(spec: JobSpec) -> Path:
    return (Path.cwd() / "runs" / spec.name / "slurm").resolve()


def render_batch(spec: JobSpec, cluster, extra: Mapping) -> str:
    """``harness render``: the script ``submit`` would queue, and its launch written (without a
    run: the job creates one when it starts), so ``sbatch`` of the printed script runs it."""
    launch = batch_manifest(spec, batch_uri(spec))
    folder = launch_folder(spec, launch)
    script = batch_script(spec, cluster, launch, folder, extra)
    if not (folder / launch_manifest.FILE_NAME).exists():
        launch_manifest.write(launch, folder)
    return script


def refuse_if_active(folder: Path) -> None:
    """Two identical jobs would share one checkpoint folder and one run: refuse the second."""
    from tracking.run import run_status
    path = folder / launch_manifest.FILE_NAME
    if not path.exists():
        return
    earlier = launch_manifest.read(path).point(0).run_id
    status = run_status(earlier) if earlier else None
    if status in ACTIVE:
        raise UserError(f"{path}: this job is already submitted (MLflow run {earlier} is "
                        f"{status}); wait for it, scancel it, or change the spec (if it died "
                        f"without saying so, remove {folder})")


def submit_batch(spec: JobSpec, cluster, uri: str, estimate, extra: Mapping, dry_run: bool,
                 run_id: Optional[str] = None) -> Optional[str]:
    """``harness submit``: every check, then the run (``run_id``, the checkpoint's when it
    resumes, else a new one, SCHEDULED until the job starts), the manifest and ``sbatch``.  The
    job id, None for a dry run.  Nothing stays written when SLURM refuses."""
    from slurm import submit as slurm_submit
    from tracking.run import create_job_run, tag_run
    from tracking.runs import RunStore
    launch = batch_manifest(spec, batch_uri(spec))
    folder = launch_folder(spec, launch)
    sub = slurm_submit.prepare(spec, cluster, uri, estimate, extra,
                               batch_script(spec, cluster, launch, folder, extra), folder)
    if dry_run:
        slurm_submit.dry_run(sub)
        return None
    slurm_submit.accepted_by_slurm(sub)  # sbatch --test-only, before anything is written
    refuse_if_active(folder)
    existed = folder.exists()
    created = None
    if launch.tracking_uri and run_id is None:
        run_id = created = create_job_run(spec, "JOB", "SCHEDULED")
    try:
        written = launch_manifest.write(launch_manifest.with_run_ids(launch, {0: run_id}), folder)
        job_id = slurm_submit.queue_script(sub, written.path)
    except BaseException:
        if created:  # a resumed run stays: it holds the epochs already trained
            RunStore(launch.tracking_uri).delete_runs([created])
        if not existed:
            launch_manifest.discard(folder)
        raise
    if run_id:
        tag_run(run_id, {"slurm.job_id": job_id})
    slurm_submit.print_submitted(sub, job_id, run_id)
    return job_id
