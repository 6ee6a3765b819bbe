"""A group's points on SLURM (``harness sweep``, ``harness scale``): checked, rendered and queued.

A sweep's points (one shape: the same nodes and GPUs for every point) are one job array, at
most K at once; each task trains the point its ``SLURM_ARRAY_TASK_ID`` names.  A scaling run's
sizes are one job each, queued ``afterany`` the one before: they never share nodes, so one
size's timing is not another's load.  Either way every script is the site template's
(slurm/render.py), every point passes ``harness submit``'s checks before anything is queued,
and ``harness status`` finds each job from its record.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from harness.errors import UserError
from harness.files import REPO, atomic_write_text
from harness.spec import manifest as launch_manifest
from harness.spec.manifest import Manifest, Point


@dataclass(frozen=True)
class GroupJob:
    """One sbatch script of the group: the whole array (``index`` None) or one point."""
    index: Optional[int]
    script: str


def check_one_shape(points: Sequence[Point]) -> None:
    """A job array gives every task the same resources: points that differ cannot be one."""
    def shape(p: Point) -> tuple:
        r = p.spec.resources
        return r.partition, r.nodes, r.gpus_per_node, r.time
    first = shape(points[0])
    for p in points[1:]:
        if shape(p) != first:
            raise UserError(
                f"point {p.index} ({p.name}): resources (partition, nodes, gpus_per_node, time) "
                f"{shape(p)} differ from point 0's {first}; a sweep's points are one job array "
                "and share one shape: sweep the resources in separate sweeps")


def log_dir(launch: Manifest) -> Path:
    return (Path.cwd() / "runs" / launch.points[0].spec.name / "slurm").resolve()


def render(launch: Manifest, manifest_path: Path, cluster, extra: Mapping,
           max_parallel: Optional[int], array: bool) -> list[GroupJob]:
    """The group's scripts, for the manifest that is (or will be) at ``manifest_path``: one job
    array (``array``), else one job per point."""
    from slurm.render import JobArray, render_sbatch

    def script(point: Point, array=None, index=None) -> str:
        return render_sbatch(point.spec, cluster, REPO, log_dir(launch), manifest_path,
                             launch.tracking_uri, workdir=Path.cwd(), extra=extra, array=array,
                             index=index)
    if array:
        check_one_shape(launch.points)
        tasks = JobArray(len(launch.points), max_parallel)
        return [GroupJob(None, script(launch.points[0], array=tasks))]
    return [GroupJob(p.index, script(p, index=p.index)) for p in launch.points]


def check(launch: Manifest, manifest_path: Path, cluster, extra: Mapping,
          max_parallel: Optional[int], array: bool, estimate=None) -> list[GroupJob]:
    """Every point passes submit's checks and SLURM would accept every script; nothing is
    written.  ``estimate``: an earlier run's epoch time, checked against the first point."""
    from slurm.submit import check_job, test_only
    for point in launch.points:
        check_job(point.spec, cluster, launch.tracking_uri, estimate if point.index == 0 else None)
    jobs = render(launch, manifest_path, cluster, extra, max_parallel, array)
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch: not found; this is not a SLURM login node. `harness "
                        f"{launch.verb} --local` runs the points on this machine")
    with tempfile.TemporaryDirectory(prefix="harness-group-") as scratch:
        for job in jobs:
            pending = Path(scratch) / "group.sbatch"
            pending.write_text(job.script)
            refused = test_only(pending)
            if refused:
                which = "job array" if job.index is None else f"point {job.index}'s job"
                raise UserError(f"sbatch --test-only refused the {launch.verb}'s {which}: {refused}")
    return jobs


def submit(launch: Manifest, jobs: Sequence[GroupJob], folder: Path,
           record: Optional[Mapping] = None) -> dict[Optional[int], str]:
    """Queue the (written) launch's jobs; {point index, or None for the array: job id}.  Each
    point's child run is tagged with its job, so `harness status` shows its epoch."""
    log_dir(launch).mkdir(parents=True, exist_ok=True)  # SLURM opens the logs here
    queued: dict[Optional[int], str] = {}
    previous = None  # each job after the one before: sizes never share nodes
    try:
        for job in jobs:
            previous = queued[job.index] = queue_one(launch, job, folder, previous,
                                                     dict(record or {}))
    except BaseException:
        cancel(list(queued.values()))  # half a group measures nothing: none of it stays queued
        raise
    return queued


def queue_one(launch: Manifest, job: GroupJob, folder: Path, after: Optional[str],
              record: dict) -> str:
    from slurm.submit import queue
    from tracking.run import tag_run
    path = folder / (f"{launch.verb}.sbatch" if job.index is None
                     else f"{launch.verb}-{job.index}.sbatch")
    atomic_write_text(path, job.script)
    job_id = queue(path, sbatch_args=[f"--dependency=afterany:{after}"] if after else [])
    write_record(launch, job, job_id, path, record)
    point = launch.point(job.index) if job.index is not None else None
    if point is not None and point.run_id:
        tag_run(point.run_id, {"slurm.job_id": job_id})
    return job_id


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)


def write_record(launch: Manifest, job: GroupJob, job_id: str, script: Path, extra: dict) -> None:
    """What `harness status` reads once SLURM has forgotten the job (runs/<name>/slurm/ID.json)."""
    point = launch.points[0] if job.index is None else launch.point(job.index)
    spec = point.spec
    atomic_write_text(log_dir(launch) / f"{job_id}.json", json.dumps({
        "job_id": job_id, "name": spec.name, "spec": spec.spec_path, "manifest": str(launch.path),
        "script": str(script), "log_dir": str(log_dir(launch)),
        "tracking_uri": launch.tracking_uri, "experiment": spec.experiment,
        "epochs": spec.training.epochs, "group": dict(launch.group or {}),
        **({"point": job.index} if job.index is not None else {}), **extra}, indent=1))


def manifest_path(folder: Path) -> Path:
    return folder / launch_manifest.FILE_NAME
