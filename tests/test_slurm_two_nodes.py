"""A 2-node x 1-task Horovod job across a real network interface.

slurm/dev/two_nodes.sh runs two slurmd, each in its own network and UTS
namespace (hosts lhn1 and lhn2, eth0 on a bridge), beside a controller on the
bridge.  The job is submitted with `harness submit`, its two ranks join over
MPI (srun --mpi=pmix) through the veth pair, and log to an mlflow server on
the head node, since a SQLite file is refused for a 2-node job.  The nodes
reach the server by the head node's host name, as on a real cluster (their
/etc/hosts maps it to the bridge address), which MLflow's host check refuses
unless `harness tracking serve` allowed it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, on_engine, run_cli
from slurm_dev import DevSlurm

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc, pytest.mark.slow]
TWO_NODES = REPO / "slurm" / "dev" / "two_nodes.sh"
STATE = Path(os.environ.get("HARNESS_SLURM_2N", "/tmp/lars-slurm-2n"))


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    reason = None
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "two namespaced nodes need root and iproute2"
    else:
        done = subprocess.run(["bash", str(TWO_NODES), "start"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            reason = f"two_nodes.sh start failed: {(done.stderr or done.stdout).strip()[-300:]}"
    if reason:
        if os.environ.get("HARNESS_REQUIRE_ALL"):
            pytest.fail(f"the two-node SLURM is required in CI: {reason}")
        pytest.skip(reason)
    from mlflow_server import MlflowServer
    # On every interface, reached by name: the host's own (127.0.0.1 here, 10.77.0.1 in the nodes).
    server = MlflowServer(tmp_path_factory.mktemp("mlflow2n"), host="0.0.0.0",
                          name=socket.gethostname()).start()
    cluster = DevSlurm(STATE)
    cluster.env = {"SLURM_CONF": str(STATE / "slurm.conf"), "HARNESS_CLUSTER": str(STATE / "cluster.yaml")}
    yield cluster, server
    server.stop()
    subprocess.run(["bash", str(TWO_NODES), "stop"], capture_output=True, timeout=120)


def _bytes_through(node: str) -> int:
    stats = Path(f"/sys/class/net/v{node}/statistics")
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


def test_two_node_job_trains_across_the_network(two_nodes, workdir, pima_csv, engine):
    slurm, server = two_nodes
    before = {n: _bytes_through(n) for n in ("lhn1", "lhn2")}
    done = run_cli("submit", REPO / "jobs" / "diabetes_mlp.yaml", "--partition", "debug",
                   "--nodes", "2", "--gpus-per-node", "1", "--set", f"data.csv={pima_csv}",
                   "--set", "training.epochs=3", "--set", f"tracking.experiment=two-nodes-{engine}",
                   *on_engine(engine),
                   cwd=workdir, env=dict(slurm.env, MLFLOW_TRACKING_URI=server.url), timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"submitted job (\d+)", done.stdout).group(1)
    info = slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    log = (workdir / "runs" / "diabetes_mlp" / "slurm" / f"diabetes_mlp-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", log
    assert info["NodeList"] == "lhn[1-2]" and "weights identical on all 2 ranks" in log

    # Both nodes resolved the head by name (rank 0 created the run; lhn2's telemetry joined it).
    assert server.url == f"http://{socket.gethostname()}:{server.port}"
    client = MlflowClient(server.url)
    run = client.search_runs([client.get_experiment_by_name(f"two-nodes-{engine}").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["engine"] == engine
    assert sorted(run.data.params["hosts"].split(",")) == ["lhn1", "lhn2"]  # two UTS namespaces
    # lhn2 is not rank 0: its node's sampler reached the server by name on its own.
    assert "system/lhn2/cpu_utilization_percentage" in run.data.metrics
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [0, 1, 2]
    # The gradients crossed the bridge: both veth ends carried the allreduce traffic.
    moved = {n: _bytes_through(n) - before[n] for n in before}
    assert all(v > 100_000 for v in moved.values()), moved


def _shape(rate: str = "") -> None:
    """Each node's NIC sends at most ``rate`` (a token bucket on eth0 in its namespace); '' lifts it."""
    for node in ("lhn1", "lhn2"):
        netns = ["ip", "netns", "exec", node, "tc", "qdisc"]
        subprocess.run(netns + ["del", "dev", "eth0", "root"], capture_output=True)
        if rate:
            subprocess.run(netns + ["add", "dev", "eth0", "root", "tbf", "rate", rate,
                                    "burst", "256kb", "latency", "100ms"], check=True)


def _sweep_two_nodes(slurm, server, workdir, sizes, *extra) -> str:
    """A spread sweep of the GPU stand-in (the host idles 40 ms a step, as it waits for a GPU)."""
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", "--gpus", sizes, "--layout", "spread",
                   "--repeats", "3", "--set", "data.model=gpu_standin",
                   "--set", "data.samples_per_epoch=2048", "--predict", *extra,
                   cwd=workdir, env=dict(slurm.env, MLFLOW_TRACKING_URI=server.url), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


VALIDATE = (r"validate: N=2 \(2 nodes x 1\): measured (\d+)%.*, predicted (\d+)% \(compute "
            r"([\d.]+) ms \+ the larger of floor ([\d.]+) and allreduce ([\d.]+) ms\): "
            r"error ([+-]\d+) points, (within|OUTSIDE) the \+-15 tolerance")


def test_prediction_follows_a_network_shaped_to_a_known_rate(two_nodes, workdir):
    """On the unshaped bridge and on the link shaped to 50 Mbit/s, the sweep times the link the
    shaping set, predicts from it and the 1-process step, and checks itself against the
    measurement.  The job is the GPU stand-in: like a GPU node's host, each node's core idles
    while the step computes, so the core is free for the communication.

    How close the prediction comes is a measurement, not asserted here: this 2-core machine's
    windows vary too much (benches/prediction_two_nodes.py measures it, docs/scaling.md has the
    figures).  What is asserted is set by the world outside the harness: the link rate the
    shaping imposed, and that a step whose allreduce alone takes twice its compute is predicted
    and measured to scale worse than one whose allreduce is negligible.  (The model's own
    arithmetic is tested on its own in tests/test_scaling.py, not re-derived from its output.)"""
    slurm, server = two_nodes
    _shape()
    found = {}
    try:
        unshaped = _sweep_two_nodes(slurm, server, workdir, "1,2")
        parent = re.search(r"scale: parent run (\w+) with", unshaped).group(1)
        client = MlflowClient(server.url)
        one, = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}' and "
                                  "tags.`scale.processes` = '1'")
        _shape("50mbit")
        shaped = _sweep_two_nodes(slurm, server, workdir, "2", "--from-run", one.info.run_id)
    finally:
        _shape()
    for name, out in (("unshaped", unshaped), ("50mbit", shaped)):
        measured, predicted, *_ = re.search(VALIDATE, out).groups()
        found[name] = int(measured), int(predicted)
        assert "predict: links: inter-node" in out and "measured by this sweep at N=2" in out
        assert re.search(r"^recommendation: .+", out, re.M)
    assert f"run {one.info.run_id[:8]}, median of 3 epoch(s)" in shaped  # the earlier N=1
    busbw = float(re.search(r"N=2: step .* at ([\d.]+) GB/s bus bandwidth", shaped).group(1))
    # 50 Mbit/s = 6.25 MB/s, as shaped; the token bucket lets its 256 kB burst through at line
    # rate, so a measurement over a few MB may come out a little above the rate (0.0066-0.0075
    # printed as 0.007 once, when the line had three decimals)
    assert 0.5 * 0.00625 < busbw < 1.2 * 0.00625, busbw
    # The scenario's premise, not the harness's claim: 50 Mbit/s makes the allreduce of the
    # stand-in's ~1.2 MB of gradients (~190 ms) about four times its compute (40 ms idle plus the
    # host's own few ms), so the factor of two below holds on a machine twice as slow.  At 100
    # Mbit/s it was 96 ms against 49 ms on a loaded machine, too close to be a premise.
    allreduce_ms = float(re.search(VALIDATE, shaped).group(5))
    assert allreduce_ms > 2 * float(re.search(VALIDATE, shaped).group(3))
    assert found["50mbit"][1] < 50 < found["unshaped"][1]  # the model: network-bound vs not
    assert found["50mbit"][0] < found["unshaped"][0], found  # and the measurement agrees
    print(f"two-node (measured %, predicted %): {found}")
