"""A week-long job's telemetry stays viewable: full rate for the first hour, then window means
and maxima, every sample in a compressed archive; checked by hand on a small case and over a
simulated week (an accelerated clock) sent to a real mlflow server."""
from __future__ import annotations

import csv
import gzip
import io

import pytest
from mlflow import MlflowClient

from harness.telemetry.retention import Retention, reduction_of, rows_bound
from harness.telemetry.sampler import FAST_METRICS, SLOW_METRICS

pytestmark = pytest.mark.tracking
WEEK_S = 7 * 24 * 3600


def test_full_rate_then_window_means_and_maxima_by_hand(tmp_path):
    sent = []
    keep = Retention(lambda m, t: sent.append((t, dict(m))), full_rate_s=3, window_s=2,
                     archive=tmp_path / "node.csv.gz")
    for t, value in enumerate([1, 2, 3, 4, 10, 6, 8, 7]):
        keep({"u": float(value)}, 100.0 + t)
    assert keep.close() == tmp_path / "node.csv.gz"
    # t=100..102 as they came; windows [103,105) and [105,107) and the last, partial one.
    assert sent == [(100.0, {"u": 1.0}), (101.0, {"u": 2.0}), (102.0, {"u": 3.0}),
                    (105.0, {"u": 7.0, "u_max": 10.0}), (107.0, {"u": 7.0, "u_max": 8.0}),
                    (109.0, {"u": 7.0, "u_max": 7.0})]
    with gzip.open(tmp_path / "node.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows] == [1, 2, 3, 4, 10, 6, 8, 7]


def test_each_kind_of_reading_keeps_what_it_means_over_a_window():
    """A gauge its mean and maximum, a clock its mean, a running total its last reading, a
    bitmask every bit seen: what the sampler's readings mean, checked by hand."""
    sent = []
    keep = Retention(lambda m, t: sent.append((t, dict(m))), full_rate_s=0, window_s=3)
    gpu = "system/n/gpu_0_"
    for t, (watts, clock, joules, reasons) in enumerate([(100, 1500, 10, 1), (150, 1900, 20, 4),
                                                         (110, 1600, 30, 1)]):
        keep({gpu + "power_usage_watts": float(watts), gpu + "sm_clock_mhz": float(clock),
              gpu + "energy_joules": float(joules), gpu + "clock_event_reasons": float(reasons),
              "system/n/network_receive_megabytes": float(t)}, 100.0 + t)
    keep.close()
    assert sent == [(103.0, {gpu + "power_usage_watts": 120.0, gpu + "power_usage_watts_max": 150.0,
                             gpu + "sm_clock_mhz": pytest.approx(5000 / 3),
                             gpu + "energy_joules": 30.0, gpu + "clock_event_reasons": 5.0,
                             "system/n/network_receive_megabytes": 2.0})]
    assert [reduction_of(gpu + m) for m in FAST_METRICS + SLOW_METRICS].count("gauge") == 8


def test_a_simulated_week_is_bounded_in_the_store_and_whole_in_the_archive(mlflow_server, tmp_path):
    from tracking.mlflow_tracker import MlflowTracker
    client = MlflowClient(mlflow_server.url)
    run_id = client.create_run(client.create_experiment("telemetry-week")).info.run_id
    tracker = MlflowTracker(client, run_id, mlflow_server.url, tmp_path / "fallback.jsonl")
    origin = 1_700_000_000.0
    keep = Retention(lambda m, t: tracker.log_system_metrics(m, int(t - origin), timestamp_s=t),
                     archive=tmp_path / "node.csv.gz")
    spike_at = 3 * 24 * 3600 + 17  # one second at 100% in a quiet day three
    names = ("system/n/gpu_0_utilization_percentage", "system/n/gpu_0_power_usage_watts")
    for second in range(WEEK_S):  # one sample a second, on an accelerated clock
        busy = 100.0 if second == spike_at else 40.0
        keep({names[0]: busy, names[1]: 150.0 + second % 7}, origin + second)
    keep.close()
    tracker.close(flush_s=600)  # ~70,000 rows: more than the default final flush allows
    assert not (tmp_path / "fallback.jsonl").exists(), "every row reached the server"

    utilization = client.get_metric_history(run_id, names[0])
    maxima = client.get_metric_history(run_id, names[0] + "_max")
    assert len(utilization) + len(maxima) <= rows_bound(WEEK_S, 1, 3600, 60) < WEEK_S / 20
    assert len([m for m in utilization if m.step < 3600]) == 3600  # the first hour, every second
    assert max(m.value for m in maxima) == 100.0  # the spike survives as a maximum...
    assert max(m.value for m in utilization) < 42.0  # ...which a mean hides
    with gzip.open(tmp_path / "node.csv.gz", "rt") as f:
        lines = sum(1 for _ in io.TextIOWrapper(f.buffer)) - 1
    assert lines == 2 * WEEK_S
