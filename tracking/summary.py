"""``harness report RUN_ID``: the run's summary in the terminal, read back from MLflow."""
from __future__ import annotations

from harness.errors import UserError
from tracking.report import terminal_summary
from tracking.run import tracking_uri

EPOCH_KEYS = ("loss", "val_loss", "generalization_gap", "accuracy", "val_accuracy",
              "throughput/samples_per_sec", "time/epoch_s")
FINAL_KEYS = ("best_epoch", "best_val_loss", "test_accuracy", "test_roc_auc")


def history_from_mlflow(client, run_id: str) -> list[dict]:
    by_epoch: dict[int, dict] = {}
    for key in EPOCH_KEYS:
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def print_report(run_id: str) -> int:
    from tracking.mlflow_tracker import MlflowClient
    client = MlflowClient(tracking_uri())
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise UserError(f"run {run_id!r}: not found at {tracking_uri()} "
                        f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                        "set MLFLOW_TRACKING_URI to the server that holds it") from None
    final = {k: v for k, v in run.data.metrics.items() if k in FINAL_KEYS}
    final["status"] = run.info.status
    verdict = run.data.tags.get("overfitting", "not recorded")
    print(terminal_summary(run.info.run_name or run_id, history_from_mlflow(client, run_id),
                           final, verdict))
    tags = run.data.tags
    if "telemetry.gpus" in tags:
        print(f"GPUs: {tags['telemetry.gpus']}")
        for flag in filter(None, tags.get("telemetry.flags", "").split(" | ")):
            print(f"flag: {flag}")
    return 0
