#!/usr/bin/env python3
"""What a resume costs against the run's size: the last step of every curve from one read of
the run (what the harness does) against every metric's whole history (what it did before).

    .venv/bin/python benches/resume_cost.py [--points 100000] [--keys 12] [--repeats 3]

A local SQLite store gets one run with ``--points`` telemetry samples spread over ``--keys``
system metrics (a 6-GPU node at 1 s writes 72 keys; a week is 4.4x10^7 points) and 50 epochs of
four training metrics; both ways are timed, alternated, and the ratio printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracking.mlflow_tracker import MlflowClient, last_logged_steps, logged_steps  # noqa: E402


def fill(client, run_id: str, points: int, keys: int) -> None:
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    batch = []
    for i in range(points):
        batch.append(Metric(f"system/node/gpu_0_m{i % keys}", 1.0, now, i // keys))
        if len(batch) == 1000:
            client.log_batch(run_id, metrics=batch)
            batch = []
    epochs = [Metric(k, 1.0, now, e) for e in range(50)
              for k in ("loss", "val_loss", "accuracy", "val_accuracy")]
    client.log_batch(run_id, metrics=batch + epochs[:1000 - len(batch)])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        run_id = client.create_run(client.create_experiment("resume")).info.run_id
        began = time.perf_counter()
        fill(client, run_id, args.points, args.keys)
        print(f"store: {args.points} telemetry points in {args.keys} keys + 200 epoch values "
              f"({time.perf_counter() - began:.0f} s to write)")
        times = {"last step per key (harness)": [], "whole history (before)": []}
        for _ in range(args.repeats):
            for name, read in (("last step per key (harness)", last_logged_steps),
                               ("whole history (before)", logged_steps)):
                began = time.perf_counter()
                read(client, run_id)
                times[name].append(time.perf_counter() - began)
        medians = {k: statistics.median(v) for k, v in times.items()}
        for name, seconds in medians.items():
            print(f"{name:30s} {seconds:8.3f} s (median of {args.repeats})")
        ratio = medians["whole history (before)"] / medians["last step per key (harness)"]
        print(f"ratio: the old resume read took {ratio:.0f}x as long")
    return 0


if __name__ == "__main__":
    sys.exit(main())
