"""Scaling: the arithmetic on made-up timings, a real local sweep, and the probe under horovodrun."""
from __future__ import annotations

import csv
import math
import re

import pytest
from mlflow import MlflowClient

from conftest import REPO, run_cli
from harness.runtime import collectives
from harness.errors import UserError
from harness.scaling import comm_model, links, predict
from harness.scaling import stats as scaling
from harness.scaling.comm_model import Layout


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
    # Mixed precision is suggested where the GPUs have tensor cores, and not for a network-bound
    # step, which float16 compute would not speed up.
    assert comm_model.diagnose(0.55, cheap_comm, mixed_precision_pays=True).endswith(
        "training.mixed_precision: true would cut the compute")
    assert "mixed_precision" not in comm_model.diagnose(0.55, cheap_comm)
    assert "mixed_precision" not in comm_model.diagnose(0.38, comm_heavy, mixed_precision_pays=True)


def test_hierarchical_allreduce_is_the_node_ring_plus_the_network_ring():
    net = comm_model.Links(intra_bw=5e9, inter_bw=1e9, intra_latency=1e-5, inter_latency=5e-5)
    nbytes = 1e8
    ring = comm_model.hierarchical_allreduce_seconds
    # One node is the flat ring over PCIe, one GPU per node the flat ring over the network.
    assert ring(nbytes, Layout(1, 4), net) == pytest.approx(
        comm_model.allreduce_seconds(nbytes, 4, 5e9) + 6 * 1e-5)
    assert ring(nbytes, Layout(4, 1), net) == pytest.approx(
        comm_model.allreduce_seconds(nbytes, 4, 1e9) + 6 * 5e-5)
    # 2 nodes x 6: 2*5/6 x 100 MB at 5 GB/s + 10 steps of 10 us, then 2*1/2 x 100 MB at 1 GB/s.
    both = ring(nbytes, Layout(2, 6), net)
    assert both == pytest.approx(0.0333333 + 1e-4 + 0.1 + 1e-4, rel=1e-5)
    assert ring(nbytes, Layout(1, 1), net) == 0.0
    # A step is compute + the larger of the floor and the allreduce.
    assert comm_model.predict_layout(0.1, nbytes, Layout(2, 6), net, floor_s=0.05).step_serial_s \
        == pytest.approx(0.1 + both)
    small = comm_model.predict_layout(0.1, 1e3, Layout(1, 2), net, floor_s=0.05)
    assert small.communication_s == 0.05 and small.efficiency == pytest.approx(0.1 / 0.15)
    assert comm_model.predict_layout(0.1, 1e3, Layout(1, 1), net, floor_s=0.05).efficiency == 1.0
    assert comm_model.measured_floor(0.145, 0.100, 0.003) == pytest.approx(0.045)
    assert comm_model.measured_floor(0.200, 0.100, 0.090) is None  # the allreduce is the gap


def test_layouts_packed_spread_and_uneven():
    assert predict.layout_for(6, 7, 6, "packed") == Layout(1, 6)
    assert predict.layout_for(7, 7, 6, "packed") == Layout(2, 4)  # the busiest node has 4
    assert predict.layout_for(6, 7, 6, "spread") == Layout(6, 1)
    assert predict.layout_for(8, 7, 6, "spread") == Layout(7, 2)
    assert predict.layout_for(43, 7, 6, "packed") is None


def _lars_points(step_s=0.100, gradient_bytes=94.2e6):
    from slurm.cluster import load_cluster
    part = load_cluster("lars").partitions["rtx2080ti"]
    lars = links.resolve(links.from_profile(part, "lars/rtx2080ti"), [])
    basis = predict.Basis(step_s, gradient_bytes, 32, "given")
    return predict.partition_points(basis, lars, part.nodes, part.gpus_per_node)


def test_forecast_for_lars_packs_one_node_and_needs_fp16_across_nodes():
    points = _lars_points()  # a ResNet-50-sized model, 100 ms a step on one GPU
    assert {p.processes for p in points} == set(range(1, 43))
    eff = {(p.processes, p.packing, p.fp16): p.efficiency for p in points}
    # 12 = 2 nodes x 6: 2*5/6 x 94.2 MB at 5 GB/s + 94.2 MB at 1.1 GB/s + latencies.
    comm = 2 * 5 / 6 * 94.2e6 / 5e9 + 10 * 10e-6 + 94.2e6 / 1.1e9 + 2 * 50e-6
    assert eff[(12, "packed", False)] == pytest.approx(0.100 / (0.100 + comm))
    assert eff[(12, "packed", True)] > eff[(12, "packed", False)]
    assert eff[(6, "packed", False)] > eff[(6, "spread", False)]  # PCIe beats the network
    text = predict.table(points, 6)
    assert [int(line.split()[0]) for line in text.splitlines()[1:]] == [
        1, 2, 4, 6, 8, 12, 16, 18, 24, 30, 32, 36, 42]
    advice = predict.recommend(points, 6)
    assert advice == ("up to 6 GPUs in one node: ~76%; 12 over the network: ~46% -- turn on "
                      "fp16_allreduce: 42 GPUs at ~53%; pack them (6 spread over 6 nodes: ~41%)")
    small = predict.recommend(_lars_points(0.035, 1.26e6), 6)  # the small CNN: scales everywhere
    assert small.startswith("up to 6 GPUs in one node: ~99%; all 42 over the network"), small


def test_links_come_from_the_sweep_then_a_probe_then_the_profile(tmp_path):
    from slurm.cluster import load_cluster
    part = load_cluster("lars").partitions["rtx2080ti"]
    profile = links.from_profile(part, "lars/rtx2080ti")
    two_hosts = tmp_path / "inter.json"
    two_hosts.write_text('{"nodes": [{"host": "a"}, {"host": "b"}], "sweep": ['
                         '{"backend": "horovod", "bytes": 1024, "seconds": 0.0002, "busbw_GBps": 0.005},'
                         '{"backend": "horovod", "bytes": 4194304, "seconds": 0.01, "busbw_GBps": 0.42}]}')
    probe = links.from_probe(two_hosts)
    assert probe["inter"][0] == pytest.approx(0.42e9) and probe["inter"][1] == pytest.approx(1e-4)
    chosen = links.resolve(profile, [probe])
    assert chosen.inter_bw == pytest.approx(0.42e9) and chosen.intra_bw == pytest.approx(5e9)
    assert chosen.sources == ("intra-node 5 GB/s (profile lars/rtx2080ti)",
                              f"inter-node 0.42 GB/s (harness probe {two_hosts})")
    swept = links.from_sweep({Layout(2, 1): 0.3, Layout(1, 2): 2.0, Layout(2, 2): 9.9})
    both = links.resolve(profile, [probe], swept)
    assert (both.intra_bw, both.inter_bw, both.inter_latency) == (2e9, 0.3e9, 0.0)
    with pytest.raises(UserError, match=r"^inter_node_GBps: unknown for this partition.*--probe"):
        links.resolve({}, [], {"intra": (1e9, 0.0, "x")})
    one_node = links.resolve({"intra": (1e9, 0.0, "x")}, [], None, kinds=("intra",))
    assert one_node.sources == ("intra-node 1 GB/s (x)",) and one_node.inter_bw == math.inf


@pytest.mark.parametrize("content, message", [
    ("not json", r"--probe .*: not a `harness probe --out` result"),
    ('{"nodes": [{"host": "a"}, {"host": "a"}, {"host": "b"}], "sweep": '
     '[{"backend": "horovod", "bytes": 1, "seconds": 1, "busbw_GBps": 1}]}',
     r"3 processes on 2 hosts mix both links"),
    ('{"nodes": [{"host": "a"}], "sweep": []}', r"1 process\(es\) measured no link"),
])
def test_a_probe_file_that_measured_no_single_link_is_refused(tmp_path, content, message):
    path = tmp_path / "probe.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        links.from_probe(path)


@pytest.mark.slow
@pytest.mark.multiproc
def test_local_sweep_makes_a_parent_run_with_two_children(workdir):
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", "--gpus", "1,2", "--local",
                   "--repeats", "3", "--set", "data.samples_per_epoch=512", "--predict",
                   cwd=workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("  N  samples/s"):]
    # Three windows per size: a real interval, positive at both ends (it is a factor either side).
    assert re.search(r"^\s+1\s+[\d.]+\s+\d+ \.\. \d+\s+[\d.]+\s+1\.00\s+100%", table, re.M), table
    assert re.search(r"^\s+2\s+[\d.]+\s+\d+ \.\. \d+\s+[\d.]+\s+[\d.]+\s+\d+%\s+\d+%\s+\d+%", table, re.M)
    assert "-" not in table.splitlines()[1].split()[2] + table.splitlines()[2].split()[2]
    assert "N=2: step" in done.stdout and "bus bandwidth" in done.stdout
    # --predict: checked at the measured size on this machine's link, then the whole partition
    # from the profile's links (a local sweep measured this machine, not LARS's nodes).
    assert re.search(r"^validate: N=2 \(1 node x 2\): measured \d+%.*, predicted \d+% .*error "
                     r"[+-]\d+ points, (within|OUTSIDE)", done.stdout, re.M), done.stdout[-3000:]
    assert "predict: links: intra-node 5 GB/s (profile lars/rtx2080ti)" in done.stdout
    assert re.search(r"^recommendation: up to \d+ GPUs? in one node", done.stdout, re.M)

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("synthetic")
    parents = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'scale-sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["scale.processes"] for c in children) == ["1", "2"]
    assert all(c.data.tags["scale.id"] == parent.data.tags["scale.id"] for c in children)
    two = next(c for c in children if c.data.tags["scale.processes"] == "2")
    assert two.data.metrics["comm/busbw_GBps"] > 0 and two.data.metrics["comm/gradient_bytes"] > 0
    assert two.data.params["processes"] == "2"

    eff = client.get_metric_history(parent.info.run_id, "scale/efficiency")
    assert sorted(m.step for m in eff) == [1, 2] and next(m.value for m in eff if m.step == 1) == 1.0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"scaling.csv", "throughput.png", "efficiency.png", "prediction.csv",
            "prediction.png"} <= artifacts
    assert parent.data.tags["scale.recommendation"].startswith("up to")
    forecast = client.get_metric_history(parent.info.run_id, "predict/efficiency_packed_fp16")
    assert sorted(m.step for m in forecast) == list(range(1, 43))
    rows = list(csv.DictReader(open(client.download_artifacts(parent.info.run_id, "scaling.csv"))))
    assert [r["processes"] for r in rows] == ["1", "2"] and float(rows[1]["predicted_efficiency"]) > 0


@pytest.mark.multiproc
def test_probe_under_horovodrun_gloo_reports_bus_bandwidth(workdir):
    done = run_cli("probe", "--np", "2", "--max-bytes", "65536", "--log", "--out", "probe.json",
                   cwd=workdir, timeout=300)
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
    # Its file is a measured link for `scale --predict --probe`: two processes on one host.
    (kind, (bw, latency, source)), = links.from_probe(workdir / "probe.json").items()
    assert kind == "intra" and bw > 0 and latency > 0 and source.startswith("harness probe")


@pytest.mark.multiproc
def test_probe_times_the_tf_engines_own_allreduce(workdir, tf_engine):
    done = run_cli("probe", "--np", "2", "--engine", "tf", "--max-bytes", "16384", "--out",
                   "probe.json", cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "probe: 2 process(es) on 1 host(s)" in out and "engine: tf" in out
    rows = re.findall(r"^tf\s+(\d+)\s+([\d.]+)ms\s+(\S+)\s+(\S+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1024, 4096, 16384] and all(float(r[3]) > 0 for r in rows)
    assert "mpi4py: skipped, tf engine: no MPI" in out
    (kind, (bw, _, _)), = links.from_probe(workdir / "probe.json").items()
    assert kind == "intra" and bw > 0


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


@pytest.mark.tracking
def test_predict_without_a_sweep_logs_a_forecast_run(workdir):
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", "--predict", "--step-ms", "35",
                   cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one process 35.0 ms per step (given (--step-ms)), 1.26 MB of float32 gradients" \
        in done.stdout
    assert re.search(r"^ 42 +7 nodes x 6 +\d+% +\d+% +\d+ ", done.stdout, re.M), done.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])[0]
    assert run.data.tags["harness.kind"] == "scale-prediction"
    nbytes = int(run.data.params["gradient_bytes.fp32"])  # 4 bytes a weight of the built model
    assert 1.25e6 < nbytes < 1.27e6 and nbytes % 4 == 0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"prediction.csv",
                                                                         "prediction.png"}
    rows = list(csv.DictReader(open(client.download_artifacts(run.info.run_id, "prediction.csv"))))
    assert len(rows) == 42 * 4 and {r["packing"] for r in rows} == {"packed", "spread"}


@pytest.mark.parametrize("args, message", [
    (["--gpus", "2,4", "--local", "--predict"], "--predict needs 1 among the sizes"),
    (["--comm-floor-ms", "5"], "go with --predict"),
    (["--predict", "--step-ms", "-3"], "--step-ms -3.0: give one process's step time"),
    (["--predict", "--step-ms", "30", "--probe", "missing.json"], "--probe missing.json: not a"),
    (["--predict", "--from-run", "0123456789abcdef"], "--from-run 0123456789abcdef: not found: no tracking database"),
])
def test_bad_prediction_input_is_one_line_and_exit_2(workdir, args, message):
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", *args, cwd=workdir, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (workdir / "runs").exists()
