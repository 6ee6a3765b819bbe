"""A week-long 6-GPU job's telemetry in the store, and how fast the UI's charts of it load.

Simulates a week of one node's telemetry (the sampler's 6 GPUs x 12 metrics, the PCIe and
per-process readings every fifth tick as it takes them, and its 5 host metrics, one tick a
second on an accelerated clock) through the harness's retention (full rate for an hour, then
one value per metric per minute, a gauge's maximum beside its mean) into a real `harness
tracking serve` (PostgreSQL by default), then asks the server for every system-metric series
the way MLflow's UI draws its charts (``get-history-bulk-interval``, 320 points a chart, six
requests at a time like a browser; the UI itself only asks for the charts on screen).
With ``--browser``, it also opens each run's system-metrics tab in a real headless Chromium
(a 1400x1000 window, its cache warm) and times the page from its start to the last on-screen
chart's data (benches/browser_timing.py).  The baseline in the same run: the same charts of a
run holding one full-rate hour.

    .venv/bin/python benches/telemetry_week.py [--store postgres|sqlite] [--days 7] [--browser]
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
from harness.telemetry.retention import MAX_SUFFIX, reduction_of  # noqa: E402
from harness.telemetry.sampler import FAST_METRICS, SLOW_EVERY, SLOW_METRICS  # noqa: E402

HOST = ("cpu_utilization_percentage", "system_memory_usage_megabytes",
        "system_memory_usage_percentage", "network_receive_megabytes", "network_transmit_megabytes")
EVERY_TICK = ([f"system/node/gpu_{g}_{m}" for g in range(6) for m in FAST_METRICS]
              + [f"system/node/{m}" for m in HOST])
EVERY_FIFTH = [f"system/node/gpu_{g}_{m}" for g in range(6) for m in SLOW_METRICS]
NAMES = EVERY_TICK + EVERY_FIFTH


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
        names = NAMES if second % SLOW_EVERY == 0 else EVERY_TICK
        keep({n: float((second + i) % 100) for i, n in enumerate(names)}, origin + second)
    keep.close()
    tracker.close(flush_s=3600)
    return run_id, rows[0], time.perf_counter() - began


def charts(url: str, run_id: str) -> float:
    """Seconds until every system metric's chart data has arrived, six requests at a time."""
    import requests
    keys = [k for n in NAMES
            for k in ((n, n + MAX_SUFFIX) if reduction_of(n) == "gauge" else (n,))]

    def one(key):
        r = requests.get(f"{url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                         params={"run_ids": run_id, "metric_key": key, "max_results": 320},
                         timeout=60)
        r.raise_for_status()
        return len(r.json().get("metrics", []))
    began = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, keys))
    return len(keys), time.perf_counter() - began


def browse(url: str, experiment: str, hour: str, week: str, repeats: int = 3) -> None:
    """The system-metrics tab of each run in Chromium, alternated; medians."""
    import statistics
    from browser_timing import Browser  # benches/, beside this script
    from tracking.links import run_link
    pages = {name: run_link(url, experiment, run).replace("?", "/system-metrics?")
             for name, run in (("hour", hour), ("week", week))}
    loads = {name: [] for name in pages}
    with Browser(width=1400, height=1000) as browser:
        browser.chart_load(pages["hour"])  # the UI's code into the cache, as a returning user
        for i in range(repeats):
            for name in (("hour", "week") if i % 2 == 0 else ("week", "hour")):
                loads[name].append(browser.chart_load(pages[name]))
    for name, runs in loads.items():
        seconds = statistics.median(r.seconds for r in runs)
        asked = statistics.median(r.first_request_s for r in runs)
        data = statistics.median(r.seconds - r.first_request_s for r in runs)
        print(f"Chromium, {name}'s system-metrics tab ({runs[0].requests} charts on screen): drawn "
              f"{seconds:.2f} s after the page started (runs " + ", ".join(
                  f"{r.seconds:.2f}" for r in runs) + f"); the UI asked for the first chart's "
              f"data at {asked:.2f} s and had all of it {data:.2f} s later")
    week_s, hour_s = (statistics.median(r.seconds for r in loads[n]) for n in ("week", "hour"))
    print(f"Chromium week / hour: {week_s / hour_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgres", choices=["postgres", "sqlite"])
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--browser", action="store_true",
                        help="also time the system-metrics tab in headless Chromium")
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
        unbounded = week_s * len(EVERY_TICK) + week_s // SLOW_EVERY * len(EVERY_FIFTH)
        series, hour_load = min(charts(url, hour) for _ in range(3))
        series, week_load = min(charts(url, week) for _ in range(3))
        print(f"\n{args.store}: one node, {len(NAMES)} metrics, {args.days:g} days at 1 sample/s")
        print(f"rows stored: {week_rows} ({week_rows / len(NAMES):.0f} per metric;"
              f" unbounded: {unbounded}, {unbounded / week_rows:.1f}x more); sent in {fill_s:.0f} s")
        print(f"system-metric charts ({series} series): week {week_load:.2f} s, "
              f"one full-rate hour {hour_load:.2f} s, ratio {week_load / hour_load:.2f}")
        if args.browser:
            browse(url, experiment, hour, week)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        if os.geteuid() == 0:
            import shutil
            shutil.rmtree(postgres.cluster_root(home), ignore_errors=True)


if __name__ == "__main__":
    main()
