"""``harness sweep`` on SLURM: the group's job array (harness/group/cluster.py), then one small
job to summarize it.

Each array task trains the point its ``SLURM_ARRAY_TASK_ID`` names, checkpoints, and requeues
on preemption like a single job (its own job id, its own checkpoint folder, its own child run).
The summary job, queued ``afterany`` the array through the site's template, writes the results
onto the parent run once every task has ended, however they ended.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Mapping, Optional

from harness.errors import UserError
from harness.files import REPO, atomic_write_text
from harness.group import cluster as group_cluster
from harness.sweep import plan as planning
from harness.sweep.plan import Plan

ARRAY_FILE = "array.json"  # beside points.json: the array's job id, once SLURM has it


def check(plan: Plan, cluster_name: str, extra: Mapping, max_parallel: Optional[int]):
    """Every point passes submit's checks and SLURM would accept the array; (cluster, uri,
    script).  Nothing is written."""
    from slurm.cluster import load_cluster
    from tracking.run import submission_facts
    cluster = load_cluster(cluster_name)
    uri, estimate = submission_facts(plan.base)
    check_shared_tracking(plan, cluster, uri, max_parallel)
    unwritten = launch_of(plan, {}, "", uri)
    jobs = group_cluster.check(unwritten, group_cluster.manifest_path(plan.folder), cluster,
                               extra, max_parallel, True, estimate)
    return cluster, uri, jobs[0].script


def launch_of(plan: Plan, run_ids: dict, parent_run_id: str, uri: str):
    r = plan.base.resources
    return planning.launch(plan, run_ids, parent_run_id, uri, r.nodes * r.gpus_per_node, r.nodes)


def slurm_log_dir(plan: Plan) -> Path:
    return (Path.cwd() / "runs" / plan.base.name / "slurm").resolve()


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


def submit(plan: Plan, cluster, extra: Mapping, max_parallel: Optional[int],
           launch) -> tuple[str, Optional[str]]:
    """Queue the (written) launch's array and its summary job; (array job id, summary job id or
    None)."""
    jobs = group_cluster.render(launch, launch.path, cluster, extra, max_parallel, True)
    summary_of = {"kind": "sweep", "sweep_id": plan.sweep_id,
                  "points_file": str(plan.folder / "points.json"), "points": len(plan.points),
                  "max_parallel": max_parallel}
    array_id = group_cluster.submit(launch, jobs, plan.folder, summary_of)[None]
    atomic_write_text(plan.folder / ARRAY_FILE, json.dumps(
        {"array_job_id": array_id, "log_dir": str(slurm_log_dir(plan)),
         "script": str(plan.folder / "sweep.sbatch")}, indent=1))
    summary_id = queue_summary(plan, cluster, launch.tracking_uri, extra, array_id)
    if summary_id:  # harness status names it on the sweep's line
        record = slurm_log_dir(plan) / f"{array_id}.json"
        atomic_write_text(record, json.dumps(dict(json.loads(record.read_text()),
                                                  summary_job_id=summary_id), indent=1))
    return array_id, summary_id


def queue_summary(plan: Plan, cluster, uri: str, extra: Mapping, array_id: str) -> Optional[str]:
    """The summary job; a refusal is a note, not a failure (``--summarize`` does it by hand)."""
    from slurm.render import render_summary_script
    script = render_summary_script(plan.base, cluster, REPO, slurm_log_dir(plan), Path.cwd(),
                                   plan.folder, uri, extra)
    path = plan.folder / "summary.sbatch"
    atomic_write_text(path, script)
    done = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{array_id}",
                           "--kill-on-invalid-dep=no", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: the summary job was refused ({done.stderr.strip()[-200:]}); once the "
              f"points end, run: harness sweep --summarize {plan.sweep_id}", flush=True)
        return None
    return done.stdout.strip().split(";")[0]
