"""``harness sweep --summarize ID``: the sweep's results on its parent run, at any time.

Reads every point's child run (and, on SLURM, its array task's state), writes the results
table (CSV and HTML), the validation curves of all points in one figure and the objective
against each varied parameter onto the parent run, tags the best point, and prints the table.
Once every point has ended the parent run ends too: FINISHED when at least one point finished
(a failed point never fails the sweep), else FAILED.  Safe to run again: it replaces the files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from harness.errors import UserError
from harness.group.results import publish
from harness.spec import sweep_points
from harness.sweep.objective import HELD_OUT_PREFIX, Objective
from tracking.sweep_report import OBJECTIVE

ENDED = ("FINISHED", "FAILED", "KILLED")
SLURM_ENDED_BADLY = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                     "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def find_points_file(sweep: str, log_root: Path = Path("runs")) -> Path:
    """A sweep by its id (runs/*/sweeps/ID), its folder, or the job id of its array."""
    given = Path(sweep)
    if (given / sweep_points.FILE_NAME).is_file():
        return given / sweep_points.FILE_NAME
    if given.name == sweep_points.FILE_NAME and given.is_file():
        return given
    found = sorted(log_root.glob(f"*/sweeps/{sweep}/{sweep_points.FILE_NAME}"))
    if not found and sweep.isdigit():
        from slurm.status import job_records
        record = job_records(log_root).get(sweep, {})
        found = [Path(record["points_file"])] if record.get("points_file") else []
    if not found:
        raise UserError(f"sweep {sweep!r}: not found under {log_root}/*/sweeps/; give the id "
                        "harness sweep printed, its folder, or its array's job id, from the "
                        "folder you started it in")
    return found[0]


def read_record(points_file: Path) -> dict:
    """The points file, with the array's job id once SLURM has queued it."""
    record = sweep_points.read(points_file)
    array = points_file.parent / "array.json"
    if array.is_file():
        record.update(json.loads(array.read_text()))
    return record


def end_parent(points_file: Path, status: str) -> None:
    from tracking.runs import RunStore
    record = sweep_points.read(points_file)
    RunStore(record["tracking_uri"]).set_terminated(record["parent_run_id"], status)


def slurm_states(record: dict) -> dict[int, str]:
    array = record.get("array_job_id")
    if not array:
        return {}
    from slurm.status import array_task_states
    return array_task_states(str(array), len(record["points"]))


def summarize(sweep: str, final: Optional[bool] = None) -> int:
    """Collect, write and log the results; ``final`` None: end the parent once every point has."""
    from tracking.runs import RunStore
    record = read_record(find_points_file(sweep))
    client = RunStore(record["tracking_uri"])
    tasks = slurm_states(record)
    rows = [point_row(client, record, p, tasks.get(p["index"])) for p in record["points"]]
    best = Objective.of_record(record).best(rows)
    lines = summary_lines(record, rows, best)
    for line in lines:
        print(line, flush=True)
    print(text_table(rows), flush=True)
    log_results(client, record, rows, best, lines)
    done = all(r["status"] in ENDED for r in rows) and not any(
        state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED")
        for state in tasks.values())
    if final if final is not None else done:
        status = "FINISHED" if any(r["status"] == "FINISHED" for r in rows) else "FAILED"
        client.set_terminated(record["parent_run_id"], status)
        print(f"sweep {record['sweep_id']}: parent run {record['parent_run_id']} {status}: "
              f"{client.link(record['parent_run_id'])}", flush=True)
    return 0


def point_row(client, record: dict, point: dict, task_state: Optional[str]) -> dict:
    """One point's line of the table, from its child run (and its array task)."""
    status = reconcile(client, record, point, client.get_run(point["run_id"]), task_state)
    run = client.get_run(point["run_id"])  # again: reconcile may have ended it, with its reason
    metrics, tags = run.data.metrics, run.data.tags
    history = sorted(client.get_metric_history(point["run_id"], "val_loss"), key=lambda m: m.step)
    epoch_s = client.get_metric_history(point["run_id"], "time/epoch_s")
    best_val = metrics.get("best_val_loss")
    best_epoch = metrics.get("best_epoch")
    if best_val is None and history:  # still running: the best so far
        best = min(history, key=lambda m: m.value)
        best_val, best_epoch = best.value, best.step + 1
    processes = int(run.data.params.get("processes", record.get("processes", 1)))
    train_s = sum(m.value for m in epoch_s)
    row = {"point": point["index"], "name": point["name"], **point["values"],
           "status": status, OBJECTIVE: best_val,
           "best_epoch": int(best_epoch) if best_epoch is not None else None,
           "epochs": len(history), "overfitting": tags.get("overfitting.kind", ""),
           "train_s": round(train_s, 1), "gpu_hours": round(train_s * processes / 3600, 5),
           "failure": tags.get("failure_reason", "") if status in ("FAILED", "KILLED") else "",
           "run_id": point["run_id"], "curve": [(m.step + 1, m.value) for m in history]}
    row.update({k: v for k, v in metrics.items() if k.startswith(HELD_OUT_PREFIX)})
    ranked_by = Objective.of_record(record).metric
    row.setdefault(ranked_by, metrics.get(ranked_by))  # its last value (a val_ figure, say)
    if task_state:
        row["slurm"] = task_state
    return row


def reconcile(client, record: dict, point: dict, run, task_state: Optional[str]) -> str:
    """The run's status, corrected by SLURM where the process could not say (a SIGKILL, an
    out-of-memory kill, a task cancelled before it started): the child is marked ended."""
    status = run.info.status
    if task_state is None:  # a local sweep: the run says it all
        return "PENDING" if status == "SCHEDULED" else status
    if status in ("FINISHED", "FAILED"):
        return status
    if task_state in SLURM_ENDED_BADLY:  # SCHEDULED, RUNNING or KILLED: SLURM knows better
        new = "KILLED" if task_state == "CANCELLED" else "FAILED"
        if status != "KILLED" or new != "KILLED":  # scancel's KILLED run has its reason already
            client.set_tag(point["run_id"], "failure_reason",
                           f"array task {record['array_job_id']}_{point['index']} ended "
                           f"{task_state} in SLURM while the run was {status}; see "
                           f"{record.get('log_dir', 'the job logs')}")
        client.set_terminated(point["run_id"], new)
        return new
    if status == "SCHEDULED":
        return "PENDING" if task_state in ("PENDING", "REQUEUED") else task_state
    if status == "KILLED" and task_state in ("PENDING", "REQUEUED", "RUNNING"):
        return "REQUEUED"  # preempted: waiting to resume into this same run
    return status


def summary_lines(record: dict, rows: list, best: Optional[dict]) -> list[str]:
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"sweep {record['sweep_id']}: {len(rows)} points: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    objective = Objective.of_record(record)
    if best:
        epoch = f" at epoch {best['best_epoch']}" if objective.metric == OBJECTIVE else ""
        lines.append(f"best: point {best['point']} ({best['name']}) {objective.metric} "
                     f"{best[objective.metric]:.4f}{epoch}, run {best['run_id']}")
    for r in rows:
        if r["status"] in ("FAILED", "KILLED") and r["failure"]:
            lines.append(f"{r['status'].lower()}: point {r['point']} ({r['name']}): {r['failure']}")
    return lines


def columns(record: dict, rows: list) -> list[str]:
    held_out = sorted({k for r in rows for k in r if k.startswith(HELD_OUT_PREFIX)})
    ranked_by = Objective.of_record(record).metric
    chosen_on = [] if ranked_by == OBJECTIVE else [ranked_by]
    return (["point", "name", *record["varied"], "status", OBJECTIVE, *chosen_on, "best_epoch",
             "epochs", "overfitting", *held_out, "train_s", "gpu_hours"]
            + (["slurm"] if any("slurm" in r for r in rows) else []) + ["failure", "run_id"])


def text_table(rows: list) -> str:
    """The table as the terminal shows it: the objective, its epoch, the verdict, held-out figures
    (their interval bounds, ``_low``/``_high``, are in the CSV)."""
    held_out = sorted({k for r in rows for k in r if k.startswith(HELD_OUT_PREFIX)
                       and not k.endswith(("_low", "_high"))})
    width = max([5] + [len(r["name"]) for r in rows])
    lines = [f"{'#':>3}  {'point':<{width}}  {'status':<9} {OBJECTIVE:>13} {'epoch':>5}  "
             f"{'verdict':<12}" + "".join(f" {k:>13}" for k in held_out) + f" {'train s':>8}"]
    for r in rows:
        objective = f"{r[OBJECTIVE]:.4f}" if isinstance(r[OBJECTIVE], float) else "-"
        figures = "".join(f" {r[k]:>13.4f}" if isinstance(r.get(k), float) else f" {'-':>13}"
                          for k in held_out)
        lines.append(f"{r['point']:>3}  {r['name']:<{width}}  {r['status']:<9} {objective:>13} "
                     f"{r['best_epoch'] if r['best_epoch'] is not None else '-':>5}  "
                     f"{r['overfitting'] or '-':<12}{figures} {r['train_s']:>8.1f}")
    return "\n".join(lines)


def ui_links(client, record: dict, rows: list) -> dict:
    """Each point's run and the parent in the MLflow UI (Model training view)."""
    from tracking import links
    uri, parent = record["tracking_uri"], record["parent_run_id"]
    try:
        experiment = client.get_run(parent).info.experiment_id
    except Exception:  # links are a convenience: the table stands without them
        return {}
    found = {r["run_id"]: links.run_link(uri, experiment, r["run_id"]) for r in rows if r.get("run_id")}
    return {**found, "parent": links.run_link(uri, experiment, parent)}


def log_results(client, record: dict, rows: list, best: Optional[dict], lines: list) -> None:
    """The table, the figures and the best point onto the parent run (replacing earlier ones)."""
    from tracking import sweep_report
    parent = record["parent_run_id"]
    title = f"{record['name']} sweep {record['sweep_id']}"
    cols = columns(record, rows)
    table_rows = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
    best_point = best["point"] if best else None
    objective = Objective.of_record(record)

    def figures(folder: Path, table: Path) -> list[Path]:
        log_x = set(record.get("log_scale", []))
        images = [sweep_report.curves_png(
            {r["name"]: r["curve"] for r in rows}, {r["name"] for r in rows if r["status"] == "FAILED"},
            folder / "val_loss_all_points.png", f"{title}: validation loss",
            best["name"] if best else None)]
        for key in record["varied"]:
            images.append(sweep_report.objective_png(
                key, rows, folder / f"objective_vs_{key.replace('.', '_')}.png",
                f"{record['name']}: {objective.metric} vs {key}",
                key in log_x or _spans_decades(rows, key), best_point, objective))
        page = folder / "results.html"
        page.write_text(sweep_report.html_page(title, lines, table_rows, cols, images, best_point,
                                               ui_links(client, record, rows)))
        return [page, *images]
    publish(record["tracking_uri"], parent, table_rows, cols, "results.csv", figures, "sweep")
    mark_best(client, record, rows, best)
    finished = sum(r["status"] == "FINISHED" for r in rows)
    client.log_metrics(parent, {
        "sweep/points_finished": finished,
        "sweep/points_failed": sum(r["status"] in ("FAILED", "KILLED") for r in rows),
        **({f"sweep/{objective.metric}": best[objective.metric]} if best else {})})
    client.set_tag(parent, "sweep.summary", " | ".join(lines)[:5000])
    client.set_tag(parent, "sweep.summarized_at", time.strftime("%Y-%m-%d %H:%M:%S"))


def _spans_decades(rows: list, key: str) -> bool:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def mark_best(client, record: dict, rows: list, best: Optional[dict]) -> None:
    """Tag the best point on the parent and on its child (and only on it)."""
    parent = record["parent_run_id"]
    for r in rows:
        tags = client.get_run(r["run_id"]).data.tags
        if best and r["run_id"] == best["run_id"]:
            client.set_tag(r["run_id"], "sweep.best", "true")
        elif "sweep.best" in tags:
            client.delete_tag(r["run_id"], "sweep.best")
    if best:
        client.set_tag(parent, "sweep.best_run_id", best["run_id"])
        client.set_tag(parent, "sweep.best_point", f"{best['point']}: {best['name']}")
