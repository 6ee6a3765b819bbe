"""``harness status [JOB_ID]``: the harness's SLURM jobs, their state, and their latest epoch.

SLURM state comes from squeue while a job is queued or running, then from
sacct where accounting is configured, else from ``scontrol show job`` for as
long as the controller remembers it.  The training progress comes from the
job's MLflow run (tagged ``slurm.job_id``), found through the record
``harness submit`` left beside the logs; the caller passes that reader in
(``tracking.summary.job_progress``), so this module never talks to MLflow.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from harness.errors import UserError
from slurm.render import COMMENT

def _run(cmd: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def queued_jobs() -> dict[str, dict]:
    """{job id: {state, name, elapsed, reason}} for the caller's harness jobs in squeue."""
    out = _run(["squeue", "--me", "-h", "-o", "%i|%j|%T|%M|%r|%k"]) or ""
    jobs = {}
    for line in out.splitlines():
        job_id, name, state, elapsed, reason, comment = (line.split("|") + [""] * 6)[:6]
        if comment == COMMENT:
            jobs[job_id] = {"state": state, "name": name, "elapsed": elapsed, "reason": reason}
    return jobs


FORGOTTEN = "UNKNOWN (forgotten by SLURM; no accounting)"


def finished_states(job_ids: list[str]) -> dict[str, str]:
    """The states of jobs squeue no longer shows: one sacct call, else scontrol per job."""
    if not job_ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"]) or ""
    states = {}
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        if job_id in job_ids and state:
            states[job_id] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    for job_id in job_ids:
        states.setdefault(job_id, _scontrol_state(job_id))
    return states


def _scontrol_state(job_id: str) -> str:
    """Where accounting is off: the controller remembers a job for MinJobAge seconds."""
    out = _run(["scontrol", "show", "job", job_id]) or ""
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return FORGOTTEN



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


def show(job_id: Optional[str], progress: Callable[[dict, str], str],
         log_root: Path = Path("runs")) -> int:
    """One line per job; ``progress(record, job_id)`` says how far its training is (from MLflow)."""
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
    gone = finished_states([jid for jid in ids if jid not in queued])
    for jid in ids:
        rec = records.get(jid, {})
        live = queued.get(jid)
        state = f"{live['state']} {live['elapsed']}" if live else gone[jid]
        if live and live["state"] == "PENDING":
            state += f" ({live['reason']})"
        name = rec.get("name") or (live or {}).get("name", "?")
        progress_line = progress(rec, jid) if rec else "submitted elsewhere: no record here"
        print(f"{jid:>8}  {name:<20} {state:<24} {progress_line}")
        if rec and job_id:
            print(f"{'':>8}  logs {rec['log_dir']}/{name}-{jid}.out")
    return 0
