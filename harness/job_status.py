"""``harness status [JOB_ID]``: the harness's SLURM jobs, their state, and their latest epoch.

SLURM state comes from squeue while a job is queued or running, then from
sacct where accounting is configured, else from ``scontrol show job`` for as
long as the controller remembers it.  The training progress comes from the
job's MLflow run (tagged ``slurm.job_id``), found through the record
``harness submit`` left beside the logs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from harness.errors import UserError
from harness.sbatch import COMMENT

SHOWN_METRICS = ("loss", "val_loss", "generalization_gap", "val_accuracy")


def _run(cmd: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def queued_jobs() -> dict[str, dict]:
    """{job id: {state, name, elapsed, reason}} for the harness's jobs in squeue."""
    out = _run(["squeue", "-h", "-o", "%i|%j|%T|%M|%r|%k"]) or ""
    jobs = {}
    for line in out.splitlines():
        job_id, name, state, elapsed, reason, comment = (line.split("|") + [""] * 6)[:6]
        if comment == COMMENT:
            jobs[job_id] = {"state": state, "name": name, "elapsed": elapsed, "reason": reason}
    return jobs


def finished_state(job_id: str) -> str:
    """The state of a job squeue no longer shows: sacct, else scontrol, else unknown."""
    out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"])
    if out and out.strip():
        return out.split()[0]
    out = _run(["scontrol", "show", "job", job_id]) or ""
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "UNKNOWN (forgotten by SLURM; no accounting)"


def job_records(log_root: Path) -> dict[str, dict]:
    """The records `harness submit` wrote under runs/*/slurm/ (newest job last)."""
    records = {}
    for path in sorted(log_root.glob("*/slurm/*.json")):
        try:
            rec = json.loads(path.read_text())
            records[str(rec["job_id"])] = rec
        except (ValueError, KeyError, OSError):
            continue
    return dict(sorted(records.items(), key=lambda kv: _job_order(kv[0])))


def _job_order(job_id: str) -> int:
    return int(job_id) if job_id.isdigit() else 0


def latest_epoch(rec: dict, job_id: str) -> str:
    """'epoch 7/20 loss 0.41 ...' from the job's MLflow run, or why it is not there."""
    try:
        from tracking.mlflow_tracker import MlflowClient
        client = MlflowClient(rec["tracking_uri"])
        experiment = client.get_experiment_by_name(rec["experiment"])
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], f"tags.`slurm.job_id` = '{job_id}'", max_results=1)
    except Exception as e:
        return f"mlflow unreachable ({type(e).__name__})"
    if not runs:
        return "no MLflow run yet"
    run = runs[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    if not history:
        return f"run {run.info.run_id[:8]} {run.info.status}, no epoch finished yet"
    step = max(m.step for m in history)
    values = "  ".join(f"{k} {run.data.metrics[k]:.4f}" for k in SHOWN_METRICS if k in run.data.metrics)
    return f"run {run.info.run_id[:8]} {run.info.status}: epoch {step + 1}/{rec.get('epochs', '?')}  {values}"


def show(job_id: Optional[str], log_root: Path = Path("runs")) -> int:
    if shutil.which("squeue") is None:
        raise UserError("squeue: not found; `harness status` runs where SLURM's commands are")
    queued = queued_jobs()
    records = job_records(log_root)
    ids = [job_id] if job_id else sorted(set(records) | set(queued), key=_job_order)
    if job_id and job_id not in records and job_id not in queued:
        raise UserError(f"job {job_id}: not a harness job in squeue or under {log_root}/*/slurm/; "
                        "run harness status from the folder you submitted from")
    if not ids:
        print(f"no harness jobs in the queue or under {log_root}/*/slurm/")
        return 0
    for jid in ids:
        rec = records.get(jid, {})
        live = queued.get(jid)
        state = f"{live['state']} {live['elapsed']}" if live else finished_state(jid)
        if live and live["state"] == "PENDING":
            state += f" ({live['reason']})"
        name = rec.get("name") or (live or {}).get("name", "?")
        progress = latest_epoch(rec, jid) if rec else "submitted elsewhere: no record here"
        print(f"{jid:>8}  {name:<20} {state:<24} {progress}")
        if rec and job_id:
            print(f"{'':>8}  logs {rec['log_dir']}/{name}-{jid}.out")
    return 0
