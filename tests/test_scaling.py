"""Scaling: the arithmetic on made-up timings, a real local sweep, and the probe under horovodrun."""
from __future__ import annotations

import csv
import math
import re

import pytest
from mlflow import MlflowClient

from conftest import REPO, run_cli
from harness.runtime import collectives
from harness.scaling import comm_model
from harness.scaling import stats as scaling


def test_interval_is_a_t_interval_on_the_log_of_the_rate():
    # logs of 50, 100, 200: mean log(100), sample sd log(2); t(0.975, 2) = 4.303
    ci = scaling.mean_ci([50.0, 100.0, 200.0])
    assert ci.mean == pytest.approx(100.0)  # the geometric mean
    factor = math.exp(4.303 * math.log(2) / math.sqrt(3))
    assert ci.high == pytest.approx(100.0 * factor) and ci.low == pytest.approx(100.0 / factor)
    assert ci.windows == 3 and ci.meaningful
    assert math.isnan(scaling.mean_ci([5.0]).low) and not scaling.mean_ci([5.0, 6.0]).meaningful


def test_a_throughput_interval_never_reaches_zero():
    """The windows that gave "-413 .. 5566" samples/s with a plain t interval."""
    windows = [2400.0, 3300.0, 1100.0]
    mean = sum(windows) / 3
    sd = math.sqrt(sum((w - mean) ** 2 for w in windows) / 2)
    assert mean - 4.303 * sd / math.sqrt(3) < 0  # the old interval went negative
    ci = scaling.mean_ci(windows)
    assert 0 < ci.low < ci.mean < ci.high
    assert scaling.t95(1000) == 1.96
    with pytest.raises(ValueError):
        scaling.mean_ci([])


def test_speedup_and_efficiency_against_one_process():
    rows = scaling.scale_rows({n: scaling.mean_ci([v, v]) for n, v in
                               {1: 1000.0, 2: 1800.0, 4: 3000.0, 8: 4000.0}.items()})
    assert [r.speedup for r in rows] == pytest.approx([1.0, 1.8, 3.0, 4.0])
    assert [r.efficiency for r in rows] == pytest.approx([1.0, 0.9, 0.75, 0.5])
    assert rows[2].per_process == pytest.approx(750.0)


def test_sizes_and_layouts():
    assert scaling.parse_sizes("8, 1,2,4,2") == [1, 2, 4, 8]
    for bad in ("1,x", "0", "1,,2", "-1"):
        with pytest.raises(ValueError):
            scaling.parse_sizes(bad)
    assert scaling.layout(4, 6, 7, "spread") == (4, 1)
    assert scaling.layout(12, 6, 7, "packed") == (2, 6)
    assert scaling.layout(2, 6, 7, "packed") == (1, 2)
    with pytest.raises(ValueError, match="evenly"):
        scaling.layout(8, 6, 7, "packed")
    with pytest.raises(ValueError, match="need 8 nodes"):
        scaling.layout(8, 6, 7, "spread")


def test_ring_allreduce_model():
    # 100 MB over 4 ranks at 10 GB/s bus bandwidth: 2*3/4 * 1e8 / 1e10 = 15 ms
    assert comm_model.allreduce_seconds(1e8, 4, 1e10) == pytest.approx(0.015)
    assert comm_model.allreduce_seconds(1e8, 1, 1e10) == 0.0
    # bus bandwidth inverts it
    assert collectives.bus_bandwidth(1e8, 4, 0.015) == pytest.approx(1e10)
    p = comm_model.predict(compute_s=0.030, gradient_bytes=1e8, n=4, bus_bw=1e10)
    assert p.step_serial_s == pytest.approx(0.045) and p.step_overlap_s == pytest.approx(0.030)
    assert p.efficiency == pytest.approx(2 / 3) and p.efficiency_overlap == pytest.approx(1.0)


def test_diagnosis_names_the_bottleneck():
    comm_heavy = comm_model.predict(0.010, 1e8, 8, 1e10)  # 17.5 ms allreduce vs 10 ms compute
    assert comm_model.diagnose(0.38, comm_heavy).startswith("communication-bound")
    cheap_comm = comm_model.predict(0.100, 1e6, 2, 1e10)
    assert comm_model.diagnose(0.55, cheap_comm).startswith("input- or compute-bound")
    assert comm_model.diagnose(0.55, cheap_comm, gpu_util_mean=40).startswith("input-bound")
    assert comm_model.diagnose(0.95, cheap_comm).startswith("scales well")


@pytest.mark.slow
@pytest.mark.multiproc
def test_local_sweep_makes_a_parent_run_with_two_children(workdir):
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", "--gpus", "1,2", "--local",
                   "--repeats", "3", "--set", "data.samples_per_epoch=512", cwd=workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("  N  samples/s"):]
    # Three windows per size: a real interval, positive at both ends (it is a factor either side).
    assert re.search(r"^\s+1\s+[\d.]+\s+\d+ \.\. \d+\s+[\d.]+\s+1\.00\s+100%", table, re.M), table
    assert re.search(r"^\s+2\s+[\d.]+\s+\d+ \.\. \d+\s+[\d.]+\s+[\d.]+\s+\d+%\s+\d+%\s+\d+%", table, re.M)
    assert "-" not in table.splitlines()[1].split()[2] + table.splitlines()[2].split()[2]
    assert "N=2: step" in done.stdout and "bus bandwidth" in done.stdout

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("synthetic")
    parents = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'scale-sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["scale.processes"] for c in children) == ["1", "2"]
    assert all(c.data.tags["sweep.id"] == parent.data.tags["sweep.id"] for c in children)
    two = next(c for c in children if c.data.tags["scale.processes"] == "2")
    assert two.data.metrics["comm/busbw_GBps"] > 0 and two.data.metrics["comm/gradient_bytes"] > 0
    assert two.data.params["processes"] == "2"

    eff = client.get_metric_history(parent.info.run_id, "scale/efficiency")
    assert sorted(m.step for m in eff) == [1, 2] and next(m.value for m in eff if m.step == 1) == 1.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"scaling.csv", "throughput.png", "efficiency.png"} <= artifacts
    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "scaling.csv"))))
    assert [r["processes"] for r in rows] == ["1", "2"] and float(rows[1]["predicted_efficiency"]) > 0


@pytest.mark.multiproc
def test_probe_under_horovodrun_gloo_reports_bus_bandwidth(workdir):
    done = run_cli("probe", "--np", "2", "--max-bytes", "65536", "--log", cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "probe: 2 process(es) on 1 host(s)" in out and "controller in use: gloo" in out
    rows = re.findall(r"^horovod\s+(\d+)\s+([\d.]+)ms\s+(\S+)\s+(\S+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1024, 4096, 16384, 65536]
    assert all(float(r[3]) > 0 for r in rows)  # bus bandwidth
    assert "mpi4py: skipped, not launched by MPI" in out  # gloo: no MPI world to measure
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("probe").experiment_id])[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "probe/horovod_busbw_GBps")]
    assert sorted(steps) == [1024, 4096, 16384, 65536]


def test_fp16_compression_halves_the_modelled_gradient_bytes():
    import tensorflow as tf
    from harness.runtime.collectives import gradient_bytes
    model = tf.keras.Sequential([tf.keras.layers.Input((10,)), tf.keras.layers.Dense(5)])  # 55
    assert gradient_bytes(model, fp16=False) == 55 * 4
    assert gradient_bytes(model, fp16=True) == 55 * 2


def test_too_few_windows_are_said_plainly_and_plots_carry_error_bars(tmp_path):
    from harness.scaling import report
    few = scaling.scale_rows({1: scaling.mean_ci([1000.0, 1040.0]), 2: scaling.mean_ci([1500.0, 1600.0])})
    text = report.table(few)
    assert "(2 windows: none)" in text and "need at least 3 timing windows" in text
    enough = scaling.scale_rows({1: scaling.mean_ci([990.0, 1000.0, 1010.0]),
                                 2: scaling.mean_ci([1500.0, 1550.0, 1600.0])})
    two = enough[1]
    assert 0 < two.efficiency_low < two.efficiency < two.efficiency_high  # bounds from both intervals
    assert "none" not in report.table(enough)
    for png in (report.throughput_png(enough, tmp_path / "t.png", "t"),
                report.efficiency_png(enough, tmp_path / "e.png", "e")):
        assert png.stat().st_size > 10_000
