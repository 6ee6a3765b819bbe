"""``harness report RUN_ID``: the run's summary in the terminal, read back from MLflow."""
from __future__ import annotations

from harness.errors import UserError
from tracking.intervals import with_intervals
from tracking.report import _fmt, human_epoch, terminal_summary
from tracking.run import reading_client, tracking_uri

EPOCH_KEYS = ("loss", "val_loss", "generalization_gap", "accuracy", "val_accuracy",
              "throughput/samples_per_sec", "time/epoch_s")
FINAL_KEYS = ("best_epoch", "best_val_loss", "overfitting/onset_epoch", "overfitting/gl_percent",
              "overfitting/epochs_since_best", "overfitting/loss_change_percent",
              "test_accuracy", "test_auroc", "test_tpr0", "test_tpr10", "test_negatives")


def history_from_mlflow(client, run_id: str) -> list[dict]:
    by_epoch: dict[int, dict] = {}
    for key in EPOCH_KEYS:
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def _epoch(value):
    return None if value is None else int(value)


def print_report(run_id: str) -> int:
    client = reading_client(f"run {run_id!r}")
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise UserError(f"run {run_id!r}: not found at {tracking_uri()} "
                        f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                        "set MLFLOW_TRACKING_URI to the server that holds it") from None
    # Every held-out figure the job logged, each interval beside its figure.
    final = {name: value if interval is None else
             f"{_fmt(value)} [{_fmt(interval[0])}, {_fmt(interval[1])}]"
             for name, value, interval in with_intervals(
                 {k: v for k, v in sorted(run.data.metrics.items())
                  if k in FINAL_KEYS or k.startswith("test_")})}
    final["status"] = run.info.status
    verdict = run.data.tags.get("overfitting", "not recorded")
    metrics = run.data.metrics
    marks = {"best_epoch": _epoch(metrics.get("best_epoch")),
             "onset_epoch": _epoch(metrics.get("overfitting/onset_epoch")),
             "kind": run.data.tags.get("overfitting.kind")}
    print(terminal_summary(run.info.run_name or run_id, history_from_mlflow(client, run_id),
                           final, verdict, marks))
    print_evaluation_tables(client, run_id)
    tags = run.data.tags
    if "telemetry.gpus" in tags:
        print(f"GPUs: {tags['telemetry.gpus']}")
        for flag in filter(None, tags.get("telemetry.flags", "").split(" | ")):
            print(f"flag: {flag}")
    from tracking.links import openable_run_link
    print(f"view: {openable_run_link(tracking_uri(), run.info.experiment_id, run_id)}")
    return 0


EVALUATION = "evaluation"  # the artifact folder of a job's held-out tables (harness/runtime/trainer.py)
LONG_TABLE_ROWS = 40  # a longer table (an ROC curve) is named, not printed


def print_evaluation_tables(client, run_id: str) -> None:
    """The job's held-out CSV tables (completeness, false positives by kind), as text."""
    import csv
    import tempfile
    try:
        tables = [a.path for a in client.list_artifacts(run_id, EVALUATION) if a.path.endswith(".csv")]
    except Exception:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in tables:
            with open(client.download_artifacts(run_id, path, tmp)) as f:
                rows = list(csv.reader(f))
            print(f"\n{path} ({len(rows) - 1} rows)")
            if len(rows) - 1 > LONG_TABLE_ROWS:
                print("  (long; open it in the MLflow UI or download it)")
                continue
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for row in rows:
                print("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


SHOWN_METRICS = ("loss", "val_loss", "generalization_gap", "val_accuracy")


def _job_runs(rec: dict, job_id: str) -> tuple:
    """(client, [the job's run]) from the tracking URI its record names."""
    from tracking.mlflow_tracker import MlflowClient
    client = MlflowClient(rec["tracking_uri"])
    experiment = client.get_experiment_by_name(rec["experiment"])
    return client, [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"tags.`slurm.job_id` = '{job_id}'", max_results=1)


def job_progress(rec: dict, job_id: str) -> str:
    """'epoch 7/20 loss 0.41 ...' from the job's MLflow run, or why it is not there."""
    try:
        client, runs = _job_runs(rec, job_id)
    except Exception as e:
        return f"mlflow unreachable ({type(e).__name__})"
    if not runs:
        return "no MLflow run yet"
    return _progress(client, runs[0], rec.get("epochs", "?"))


def job_link(rec: dict, job_id: str) -> str:
    """The job's run (or, for a sweep, its parent run) in the MLflow UI; "" when unknown."""
    from tracking.links import openable_run_link
    uri = rec.get("tracking_uri", "")
    try:
        if rec.get("kind") == "sweep":
            from pathlib import Path
            from harness.spec import sweep_points
            from tracking.mlflow_tracker import MlflowClient
            parent = sweep_points.read(Path(rec["points_file"]))["parent_run_id"]
            runs = [MlflowClient(uri).get_run(parent)]
        else:
            runs = _job_runs(rec, job_id)[1]
    except Exception:
        return ""
    return openable_run_link(uri, runs[0].info.experiment_id, runs[0].info.run_id) if runs else ""


def run_progress(uri: str, run_id: str, epochs) -> str:
    """A sweep point's progress, from its child run (known by id from the points file)."""
    try:
        from tracking.mlflow_tracker import MlflowClient
        client = MlflowClient(uri)
        return _progress(client, client.get_run(run_id), epochs)
    except Exception as e:
        return f"mlflow unreachable ({type(e).__name__})"


def _progress(client, run, epochs) -> str:
    history = client.get_metric_history(run.info.run_id, "loss")
    if not history:
        return f"run {run.info.run_id[:8]} {run.info.status}, no epoch finished yet"
    step = max(m.step for m in history)
    values = "  ".join(f"{k} {run.data.metrics[k]:.4f}" for k in SHOWN_METRICS if k in run.data.metrics)
    epoch = f"{human_epoch(step)}/{epochs}"
    return f"run {run.info.run_id[:8]} {run.info.status}: epoch {epoch}  {values}"
