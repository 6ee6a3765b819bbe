"""A week-long 6-GPU job's telemetry in the store, and how fast the UI's charts of it load.

Simulates a week of one node's telemetry (6 GPUs x 12 metrics + 5 host metrics, one sample a
second, on an accelerated clock) through the harness's retention (full rate for an hour, then
one-minute means and maxima) into a real `harness tracking serve` (PostgreSQL by default), then
asks the server for every system metric the way MLflow's UI draws its system-metrics charts
(``get-history-bulk-interval``, 320 points a chart, six requests at a time like a browser).
The baseline in the same run: the same charts of a run holding one full-rate hour.

    .venv/bin/python benches/telemetry_week.py [--store postgres|sqlite] [--days 7]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = ([f"system/node/gpu_{g}_metric_{m}" for g in range(6) for m in range(12)]
         + [f"system/node/host_{m}" for m in range(5)])


def fill(client, experiment: str, seconds: int, full_rate_s: float) -> tuple[str, int, float]:
    """A run holding ``seconds`` of telemetry as the harness stores it; (run id, rows, seconds)."""
    from harness.telemetry.retention import Retention
    from tracking.mlflow_tracker import MlflowTracker
    run_id = client.create_run(experiment).info.run_id
    tracker = MlflowTracker(client, run_id, "", Path(tempfile.mkdtemp()) / "fallback.jsonl")
    origin, rows = 1_700_000_000.0, [0]

    def sink(metrics, t):
        rows[0] += len(metrics)
        tracker.log_system_metrics(metrics, int(t - origin), timestamp_s=t)
    keep = Retention(sink, full_rate_s=full_rate_s, window_s=60)
    began = time.perf_counter()
    for second in range(seconds):
        keep({n: float((second + i) % 100) for i, n in enumerate(NAMES)}, origin + second)
    keep.close()
    tracker.close(flush_s=3600)
    return run_id, rows[0], time.perf_counter() - began


def charts(url: str, run_id: str) -> float:
    """Seconds until every system metric's chart data has arrived, six requests at a time."""
    import requests
    keys = [k for n in NAMES for k in (n, n + "_max")]

    def one(key):
        r = requests.get(f"{url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                         params={"run_ids": run_id, "metric_key": key, "max_results": 320},
                         timeout=60)
        r.raise_for_status()
        return len(r.json().get("metrics", []))
    began = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, keys))
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgres", choices=["postgres", "sqlite"])
    parser.add_argument("--days", type=float, default=7)
    args = parser.parse_args()
    from mlflow import MlflowClient
    from tracking import postgres, server
    home = Path(tempfile.mkdtemp(prefix="week-"))
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(ROOT / ".venv/bin/harness"), "tracking", "serve", "--store",
                             args.store, "--port", str(port)],
                            env=dict(os.environ, HARNESS_TRACKING_HOME=str(home)),
                            stdout=open(home / "serve.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        server.wait_ready(url, proc, timeout_s=300)
        client = MlflowClient(url)
        experiment = client.create_experiment("telemetry-week")
        hour, hour_rows, _ = fill(client, experiment, 3600, 3600)
        week_s = int(args.days * 86400)
        week, week_rows, fill_s = fill(client, experiment, week_s, 3600)
        unbounded = week_s * len(NAMES)
        hour_load = min(charts(url, hour) for _ in range(3))
        week_load = min(charts(url, week) for _ in range(3))
        print(f"\n{args.store}: one node, {len(NAMES)} metrics, {args.days:g} days at 1 sample/s")
        print(f"rows stored: {week_rows} ({week_rows / len(NAMES):.0f} per metric with its maximum;"
              f" unbounded: {unbounded}, {unbounded / week_rows:.1f}x more); sent in {fill_s:.0f} s")
        print(f"system-metric charts ({2 * len(NAMES)} series): week {week_load:.2f} s, "
              f"one full-rate hour {hour_load:.2f} s, ratio {week_load / hour_load:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        if os.geteuid() == 0:
            import shutil
            shutil.rmtree(postgres.cluster_root(home), ignore_errors=True)


if __name__ == "__main__":
    main()
