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
    return parse_queue(_run(["squeue", "--me", "-h", "-o", "%i|%j|%T|%M|%r|%k"]) or "")


def parse_queue(out: str) -> dict[str, dict]:
    """squeue's ``%i|%j|%T|%M|%r|%k`` lines: the jobs whose comment marks them as ours."""
    jobs = {}
    for line in out.splitlines():
        job_id, name, state, elapsed, reason, comment = (line.split("|") + [""] * 6)[:6]
        if comment.strip() == COMMENT:
            jobs[job_id] = {"state": state, "name": name, "elapsed": elapsed, "reason": reason}
    return jobs


FORGOTTEN = "UNKNOWN (forgotten by SLURM; no accounting)"


def finished_states(job_ids: list[str]) -> dict[str, str]:
    """The states of jobs squeue no longer shows: one sacct call, else scontrol per job."""
    if not job_ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"]) or ""
    states = parse_sacct_states(out, job_ids)
    for job_id in job_ids:
        if job_id not in states:
            states[job_id] = parse_scontrol_state(_run(["scontrol", "show", "job", job_id]) or "")
    return states


def parse_sacct_states(out: str, job_ids: list[str]) -> dict[str, str]:
    """sacct's ``JobID|State`` lines for these jobs ("CANCELLED by 0" -> CANCELLED)."""
    states = {}
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        if job_id in job_ids and state:
            states[job_id] = state.split()[0]
    return states


def parse_scontrol_state(out: str) -> str:
    """Where accounting is off: the controller remembers a job for MinJobAge seconds."""
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return FORGOTTEN


def array_task_states(array_job_id: str, size: int) -> dict[int, str]:
    """{task index: state} of a job array: squeue (one line per task with -r) while queued,
    then sacct, else ``scontrol show job``, else FORGOTTEN."""
    states = parse_array_queue(
        _run(["squeue", "-h", "-r", "-j", array_job_id, "-o", "%i|%T"]) or "")
    if any(i not in states for i in range(size)):
        for index, state in _finished_tasks(array_job_id).items():
            states.setdefault(index, state)
    return {i: states.get(i, FORGOTTEN) for i in range(size)}


def parse_array_queue(out: str) -> dict[int, str]:
    """squeue -r's ``JOBID_TASK|STATE`` lines (a pending range like 50_[2-3] is skipped)."""
    states = {}
    for line in out.splitlines():
        task, _, state = line.partition("|")
        index = task.rpartition("_")[2]
        if index.isdigit():
            states[int(index)] = state
    return states


def _finished_tasks(array_job_id: str) -> dict[int, str]:
    found = parse_array_sacct(
        _run(["sacct", "-n", "-P", "-X", "-j", array_job_id, "-o", "JobID,State"]) or "",
        array_job_id)
    if found:
        return found
    # No accounting: the controller keeps one record per started task for MinJobAge seconds.
    return parse_array_scontrol(_run(["scontrol", "show", "job", array_job_id]) or "", array_job_id)


def parse_array_sacct(out: str, array_job_id: str) -> dict[int, str]:
    found = {}
    for line in out.splitlines():
        task, _, state = line.partition("|")
        index = task.rpartition("_")[2]
        if task.startswith(f"{array_job_id}_") and index.isdigit() and state:
            found[int(index)] = state.split()[0]
    return found


def parse_array_scontrol(out: str, array_job_id: str) -> dict[int, str]:
    found = {}
    for record in out.split("\n\n"):
        fields = dict(word.split("=", 1) for word in record.split() if "=" in word)
        if fields.get("ArrayJobId") == array_job_id and fields.get("ArrayTaskId", "").isdigit():
            found[int(fields["ArrayTaskId"])] = fields.get("JobState", FORGOTTEN)
    return found


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
         log_root: Path = Path("runs"),
         point_progress: Optional[Callable[[str, str, object], str]] = None,
         link: Optional[Callable[[dict, str], str]] = None) -> int:
    """One line per job; ``progress(record, job_id)`` says how far its training is (from MLflow).
    A sweep is one line with its points' states counted; asked for by its id, one line per
    point, whose progress ``point_progress(tracking uri, run id, epochs)`` reads; asked for by
    id, ``link(record, job id)`` gives the run's (the sweep's parent's) page in the MLflow UI."""
    if shutil.which("squeue") is None:
        raise UserError("squeue: not found; `harness status` runs where SLURM's commands are")
    records = job_records(log_root)
    sweeps = {jid for jid, rec in records.items() if rec.get("kind") == "sweep"}
    # An array's tasks (123_0, 123_[2-3]) belong to their sweep's line.
    queued = {jid: q for jid, q in queued_jobs().items() if jid.partition("_")[0] not in sweeps}
    ids = [job_id] if job_id else sorted(set(records) | set(queued), key=_job_order)
    if job_id and job_id not in records and job_id not in queued:
        raise UserError(f"job {job_id}: not a harness job in squeue or under {log_root}/*/slurm/; "
                        "run harness status from the folder you submitted from")
    if not ids:
        print(f"no harness jobs in the queue or under {log_root}/*/slurm/")
        return 0
    gone = finished_states([jid for jid in ids if jid not in queued and jid not in sweeps])
    for jid in ids:
        if jid in sweeps:
            show_sweep(jid, records[jid], detail=bool(job_id), point_progress=point_progress)
            _print_link(link, records[jid], jid, bool(job_id))
            continue
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
        _print_link(link, rec, jid, bool(rec and job_id))
    return 0


def _print_link(link, rec: dict, jid: str, wanted: bool) -> None:
    url = link(rec, jid) if link and wanted else ""
    if url:
        print(f"{'':>8}  view {url}")


def show_sweep(jid: str, rec: dict, detail: bool, point_progress=None) -> None:
    """``123  diabetes_mlp  sweep of 4 points: 1 COMPLETED, 1 RUNNING, 2 PENDING``; with
    ``detail``, each point's task, values, state and latest epoch."""
    from harness.spec import sweep_points
    states = array_task_states(jid, int(rec["points"]))
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    print(f"{jid:>8}  {rec['name']:<20} sweep of {rec['points']} points: {summary}")
    if not detail:
        return
    try:
        points = sweep_points.read(Path(rec["points_file"]))["points"]
    except UserError as e:
        print(f"{'':>8}  {e}")
        return
    for p in points:
        task = f"{jid}_{p['index']}"
        progress = (point_progress(rec["tracking_uri"], p["run_id"], rec.get("epochs", "?"))
                    if point_progress else "")
        print(f"{task:>10}  {p['name'][:28]:<28} {states[p['index']]:<10} {progress}")
    print(f"{'':>8}  logs {rec['log_dir']}/{rec['name']}-{jid}_<point>.out; results: harness "
          f"sweep --summarize {rec['sweep_id']}")
