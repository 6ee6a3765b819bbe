"""``harness sweep`` on SLURM: one job array for the points, one small job to summarize them.

The array's script is the harness's sbatch script with ``--array=0-(N-1)%K``; each task trains
the point its ``SLURM_ARRAY_TASK_ID`` names in the points file, checkpoints, and requeues on
preemption like a single job (its own job id, its own checkpoint folder, its own child run).
A summary job, queued ``afterany`` the array, writes the results onto the parent run once every
task has ended, however they ended.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from harness.engines import venv_python
from harness.errors import UserError
from harness.files import REPO, atomic_write_text
from harness.sweep.plan import Plan

ARRAY_FILE = "array.json"  # beside points.json: the array's job id, once SLURM has it


def array_script(plan: Plan, cluster, uri: str, extra: Mapping, max_parallel: Optional[int],
                 manifest: Path) -> str:
    from slurm.render import JobArray, render_sbatch
    log_dir = slurm_log_dir(plan)
    return render_sbatch(plan.points[0].spec, cluster, REPO, log_dir, manifest, uri,
                         workdir=Path.cwd(), extra=extra,
                         array=JobArray(len(plan.points), max_parallel))


def slurm_log_dir(plan: Plan) -> Path:
    return (Path.cwd() / "runs" / plan.base.name / "slurm").resolve()


def check(plan: Plan, cluster_name: str, extra: Mapping, max_parallel: Optional[int]):
    """Every point passes submit's checks and SLURM would accept the array; (cluster, uri,
    script).  Nothing is written."""
    from slurm.cluster import load_cluster
    from slurm.submit import check_job, test_only
    from tracking.run import submission_facts
    cluster = load_cluster(cluster_name)
    uri, estimate = submission_facts(plan.base)
    check_shared_tracking(plan, cluster, uri, max_parallel)
    for point in plan.points:  # the same resources; the epoch estimate is checked once
        check_job(point.spec, cluster, uri, estimate if point.index == 0 else None)
    script = array_script(plan, cluster, uri, extra, max_parallel, plan.folder / "launch.json")
    if shutil.which("sbatch") is None:
        raise UserError("sbatch: not found; this is not a SLURM login node. `harness sweep "
                        "--local` runs the points on this machine")
    with tempfile.TemporaryDirectory(prefix="harness-sweep-") as scratch:
        pending = Path(scratch) / "sweep.sbatch"
        pending.write_text(script)
        refused = test_only(pending)
    if refused:
        raise UserError(f"sbatch --test-only refused the sweep's job array: {refused}")
    return cluster, uri, script


def check_shared_tracking(plan: Plan, cluster, uri: str, max_parallel: Optional[int]) -> None:
    """Points running at once on different nodes would all write one SQLite file on the shared
    filesystem, which corrupts it; a one-node partition (or one point at a time) is safe."""
    name, part = cluster.partition(plan.base.resources.partition)
    at_once = min(max_parallel or len(plan.points), len(plan.points))
    if part.nodes > 1 and at_once > 1 and not uri.startswith(("http://", "https://", "postgresql", "mysql")):
        raise UserError(
            f"MLFLOW_TRACKING_URI={uri}: a local SQLite file is refused for a sweep whose {at_once} "
            f"points may run at once on different nodes of partition {name} ({part.nodes} nodes): "
            "SQLite on a shared filesystem corrupts when several nodes write; start a server on "
            "the head node (harness tracking serve --host 0.0.0.0) and export "
            "MLFLOW_TRACKING_URI=http://HEAD-NODE:5000, or use --max-parallel 1")


def submit(plan: Plan, cluster, uri: str, extra: Mapping, max_parallel: Optional[int],
           manifest: Path) -> tuple[str, Optional[str]]:
    """Queue the array and its summary job; (array job id, summary job id or None)."""
    from slurm.submit import queue
    points_file = manifest.parent / "points.json"
    script = array_script(plan, cluster, uri, extra, max_parallel, manifest)
    script_path = plan.folder / "sweep.sbatch"
    atomic_write_text(script_path, script)
    slurm_log_dir(plan).mkdir(parents=True, exist_ok=True)  # SLURM opens the logs here
    array_id = queue(script_path)
    atomic_write_text(plan.folder / ARRAY_FILE, json.dumps(
        {"array_job_id": array_id, "log_dir": str(slurm_log_dir(plan)),
         "script": str(script_path)}, indent=1))
    summary_id = queue_summary(plan, cluster, uri, extra, array_id)
    record(plan, array_id, summary_id, points_file, uri, max_parallel)
    return array_id, summary_id


def queue_summary(plan: Plan, cluster, uri: str, extra: Mapping, array_id: str) -> Optional[str]:
    """The summary job; a refusal is a note, not a failure (``--summarize`` does it by hand)."""
    from slurm import options as sbatch_options
    from slurm.render import render_summary_script
    partition, _ = cluster.partition(plan.base.resources.partition)
    site = {k: v for k, v in sbatch_options.merged(cluster.sbatch_options(partition), dict(extra)).items()
            if k in ("account", "qos", "reservation", "constraint")}  # where it may run, no more
    script = render_summary_script(plan.base.name, partition, slurm_log_dir(plan), Path.cwd(),
                                   venv_python(plan.base.training.engine, REPO), plan.folder,
                                   uri, site)
    path = plan.folder / "summary.sbatch"
    atomic_write_text(path, script)
    done = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{array_id}",
                           "--kill-on-invalid-dep=no", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: the summary job was refused ({done.stderr.strip()[-200:]}); once the "
              f"points end, run: harness sweep --summarize {plan.sweep_id}", flush=True)
        return None
    return done.stdout.strip().split(";")[0]


def record(plan: Plan, array_id: str, summary_id: Optional[str], points_file: Path, uri: str,
           max_parallel: Optional[int]) -> None:
    """What `harness status` needs: the array is one line, its points one line each."""
    atomic_write_text(slurm_log_dir(plan) / f"{array_id}.json", json.dumps({
        "job_id": array_id, "kind": "sweep", "name": plan.base.name, "sweep_id": plan.sweep_id,
        "points_file": str(points_file), "points": len(plan.points), "max_parallel": max_parallel,
        "summary_job_id": summary_id, "spec": plan.base.spec_path, "log_dir": str(slurm_log_dir(plan)),
        "tracking_uri": uri, "experiment": plan.base.experiment,
        "epochs": plan.base.training.epochs}, indent=1))
