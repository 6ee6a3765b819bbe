"""Each job for a short run on 2 CPU processes, on each engine: real Horovod (horovodrun --gloo
-np 2) and TensorFlow's MultiWorkerMirroredStrategy (two workers joined by TF_CONFIG)."""
from __future__ import annotations

import gzip
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import HARNESS, REPO, on_engine, run_cli

pytestmark = pytest.mark.multiproc
JOBS = REPO / "jobs"
SPEC = JOBS / "diabetes_mlp.yaml"
CURVES = ("loss", "val_loss", "generalization_gap", "accuracy", "val_accuracy", "lr",
          "time/epoch_s", "throughput/samples_per_sec")


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "weights identical on all 2 ranks" in result.stdout
    return result.stdout


@pytest.mark.tracking
def test_diabetes_two_processes_and_resume_is_one_complete_run(workdir, pima_csv, engine,
                                                               mlflow_server):
    """Two processes, a refused restart, a resume: one run on the server, every epoch once, with
    what MLflow's UI and a reader of the run expect to find in it."""
    experiment = f"t-resume-{engine}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": experiment}
    args = ["run", SPEC, "--np", 2, "--set", f"data.csv={pima_csv}",
            "--set", "checkpoint.every_epochs=1", "--set", "tracking.batch_metrics_every=10",
            *on_engine(engine)]
    out = _ok(run_cli(*args, "--set", "training.epochs=3", cwd=workdir, env=env))
    assert "epoch 1/3  loss" in out and "samples/s" in out and "held-out: test_accuracy" in out
    # The run's link, into MLflow's Model training view (tracking/links.py).
    assert re.search(rf"tracking: MLflow run \w+: {re.escape(mlflow_server.url)}/#/experiments/\d+"
                     rf"/runs/\w+\?workflowType=machine_learning", out), out[-1500:]
    refused = run_cli(*args, "--set", "training.epochs=5", cwd=workdir, env=env)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    out = _ok(run_cli(*args, "--set", "training.epochs=5", "--resume", cwd=workdir, env=env))
    assert "resuming at epoch 4" in out and "epoch 4/5" in out and "epoch 1/5" not in out
    # No GPU here: a clear notice, and host telemetry in the run under MLflow's system/ prefix.
    assert "telemetry: no GPU found" in out and "host metrics recorded under system/" in out

    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in CURVES:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(5)), f"{key}: {steps}"  # each epoch exactly once
    host = socket.gethostname().split(".")[0]
    assert f"system/{host}/cpu_utilization_percentage" in run.data.metrics
    params, tags = run.data.params, run.data.tags
    assert params["processes"] == "2" and params["batch_size.global"] == "20"
    assert params["engine"] == engine
    assert float(params["lr.scaled"]) == pytest.approx(0.002) and params["lr.rule"] == "linear"
    if engine == "horovod":
        assert params["version.tensorflow"].startswith("2.15") and params["version.horovod"] == "0.28.1"
    assert params["spec.training.optimizer"] == "adam" and "git.commit" in params
    assert tags["resumed_from_epoch"] == "3"
    # MLflow's own conventions: who ran what from where; the UI's model-training view; the data.
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert tags["mlflow.source.git.commit"] == params["git.commit"]
    assert tags["mlflow.source.name"] == str(SPEC) and tags["mlflow.runName"] == "diabetes_mlp"
    assert len(tags["harness.job_sha256"]) == 64
    assert client.get_experiment_by_name(experiment).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["diabetes_mlp-train"]  # once, not again on resume
    assert '"features_shape": [' in inputs[0].dataset.profile and inputs[0].dataset.digest
    assert tags["overfitting"].startswith(("no overfitting", "overfitting detected"))
    assert {"best_epoch", "best_val_loss", "test_accuracy", "batch/loss_rank0"} <= set(run.data.metrics)
    batch_steps = [m.step for m in client.get_metric_history(run.info.run_id, "batch/loss_rank0")]
    assert len(batch_steps) == len(set(batch_steps)) and 0 in batch_steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "report.html", "spec.resolved.yaml", "pip-freeze.txt",
            "telemetry_timeline.png"} <= artifacts
    html = Path(client.download_artifacts(run.info.run_id, "report.html", str(workdir))).read_text()
    assert "Overfitting verdict" in html and "data:image/png;base64," in html
    # Every telemetry sample of the node, whatever the store keeps (harness/telemetry/retention.py).
    [archive] = [a.path for a in client.list_artifacts(run.info.run_id, "telemetry")][-1:]
    with gzip.open(client.download_artifacts(run.info.run_id, archive, str(workdir)), "rt") as f:
        samples = f.read().splitlines()
    assert samples[0] == "time_s,metric,value"
    assert any(f",system/{host}/cpu_utilization_percentage," in line for line in samples)


def test_mnist_streamed_from_shards_staged_on_the_node_on_two_ranks(workdir, mnist_npz, engine):
    """The MNIST job on a shard folder, staged (``data.stage: node-local``): while the job holds
    after epoch 1, the node's scratch ($TMPDIR) holds every file its two ranks read, each once,
    and the ranks stream from there (tests/test_data.py shows which samples each reads); at the
    end the copies are gone.  The run describes the data by its manifest."""
    from harness.data import shards as fmt
    packed = run_cli("data", "pack", mnist_npz, workdir / "mnist", "--shard-mb", "0.1", cwd=workdir)
    assert packed.returncode == 0, packed.stderr
    shards = fmt.read(workdir / "mnist")
    scratch, release = workdir / "scratch", workdir / "release"
    scratch.mkdir()
    proc = subprocess.Popen(
        [*HARNESS, "run", str(JOBS / "mnist_mlp.yaml"), "--np", "2", "--set", f"data.path={shards.folder}",
         "--set", "data.stage=node-local", "--set", "training.epochs=2",
         "--set", "training.batch_size=32", *on_engine(engine)],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, TMPDIR=str(scratch), HARNESS_HOLD_AFTER_EPOCH="1",
                 HARNESS_HOLD_RELEASE=str(release)))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("hold: after epoch 1"):
            break
    [stage] = list(scratch.glob("lars-stage-*"))
    on_disk = sorted(p.name for p in stage.iterdir())
    release.write_text("")
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert on_disk == sorted(f.name for f in shards.files)  # train and test, each once, no .partial
    assert f"data: staged {len(shards.files)} file(s)" in out
    assert re.search(rf"data: streaming 512 samples from {len(shards.split('train'))} file\(s\) "
                     rf"in {stage}; this rank reads \d+ file\(s\), \d+ samples; validating on test", out)
    assert "epoch 2/2" in out and "val_accuracy" in out
    assert not list(scratch.glob("lars-stage-*"))  # removed at the end
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("mnist_mlp").experiment_id])[0]
    [given] = run.inputs.dataset_inputs
    assert given.dataset.digest == shards.digest and given.dataset.name == "mnist_mlp-train"
    assert '"num_samples": 512' in given.dataset.profile and str(mnist_npz) in given.dataset.source
    waits = client.get_metric_history(run.info.run_id, "time/data_wait_fraction")
    assert [m.step for m in waits] == [0, 1] and all(0 <= m.value <= 1 for m in waits)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the node's scratch (root)")
def test_a_node_without_room_to_stage_is_refused_before_copying(workdir, mnist_npz, tmp_path):
    """A real disk too small for the node's shards: one line with what is needed and free,
    exit 2, nothing left on the disk."""
    packed = run_cli("data", "pack", mnist_npz, workdir / "mnist", "--shard-mb", "0.1", cwd=workdir)
    assert packed.returncode == 0, packed.stderr
    scratch = tmp_path / "small"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(scratch)], check=True)
    try:
        done = run_cli("run", JOBS / "mnist_mlp.yaml", "--np", 2, "--set", f"data.path={workdir / 'mnist'}",
                       "--set", "data.stage=node-local", "--set", "training.epochs=1", cwd=workdir,
                       env={"TMPDIR": str(scratch)})
        left = list(scratch.iterdir())
    finally:
        subprocess.run(["umount", str(scratch)], check=True)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and re.search(
        rf"data.stage=node-local: node \S+ needs [\d.]+ KB for \d+ file\(s\) in \$TMPDIR "
        rf"\({scratch}\) but only [\d.]+ KB is free", said[0]), done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "epoch 1/1" not in done.stdout
    assert left == []


def test_synthetic_one_epoch(workdir, tf_engine):
    """On the tf engine; on Horovod the synthetic job runs in test_scaling's local scaling run
    (N=1 and N=2), which asserts more of it."""
    out = _ok(run_cli("run", JOBS / "synthetic.yaml", "--np", 2, "--set", "training.epochs=2",
                      "--set", "data.samples_per_epoch=512", *on_engine(tf_engine), cwd=workdir))
    assert "epoch 2/2" in out and "samples/s" in out


def _worker_pid(rank: int, parent_marker: str, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = (f"HOROVOD_RANK={rank}".encode(), f'"index": {rank}}}}}'.encode())  # TF_CONFIG
            if b"harness.runtime.worker" in cmd and parent_marker.encode() in cmd and \
                    any(v.endswith(ranks) for v in env):
                return int(pid)
        time.sleep(0.5)
    raise AssertionError(f"no worker with rank {rank} appeared")


def test_a_killed_rank_fails_the_run_fast(workdir, pima_csv, engine):
    marker = f"checkpoint.dir={workdir}/ck"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(JOBS / "diabetes_mlp.yaml"), "--np", "2",
         "--set", f"data.csv={pima_csv}", "--set", "training.epochs=1000", "--set", marker,
         *on_engine(engine)],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until training is really under way
        lines.append(line)
        if re.search(r"epoch +2/1000", line):
            break
    os.kill(_worker_pid(1, str(workdir)), signal.SIGKILL)  # the manifest's path is under it
    killed_at = time.time()
    rest, _ = proc.communicate(timeout=90)
    elapsed = time.time() - killed_at
    output = "".join(lines) + rest
    assert proc.returncode not in (0, None)
    assert elapsed < 60, f"took {elapsed:.0f} s to notice"
    first = f"rank 1 on {socket.gethostname()} failed first (killed by signal 9)"
    assert f"run failed: {first}" in output
    print(f"{engine}: every rank stopped {elapsed:.1f} s after the kill")  # -s shows it
    # The run records that first failure, not rank 0's later error about a lost peer.
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("diabetes_mlp").experiment_id])[0]
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"].startswith(first)


def test_diabetes_at_its_default_epochs_is_judged_overfitting(workdir):
    """The lecture's example 1 as written: val_loss bottoms out, then rises while loss falls."""
    out = _ok(run_cli("run", JOBS / "diabetes_mlp.yaml", "--np", 2, cwd=workdir))
    said = re.search(r"verdict: overfitting since epoch (\d+): val_loss ([\d.]+)% above its best "
                     r"\(GL [\d.]+\) while loss fell (\d+)%; best epoch (\d+)", out)
    assert said, out[-2000:]
    onset, gl, best = int(said.group(1)), float(said.group(2)), int(said.group(4))
    assert onset == best + 1 and gl > 2 and best < 150
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("diabetes_mlp").experiment_id])[0]
    metrics = run.data.metrics
    assert run.data.tags["overfitting.kind"] == "overfitting"
    assert metrics["best_epoch"] == best and metrics["overfitting/onset_epoch"] == onset
    assert metrics["overfitting/gl_percent"] == pytest.approx(gl, abs=0.05)
    report = run_cli("report", run.info.run_id, cwd=workdir)
    assert report.returncode == 0, report.stderr
    rows = {int(line.split()[0]): line for line in report.stdout.splitlines()
            if line.strip() and line.split()[0].isdigit()}
    assert sorted(rows) == list(range(1, 151))  # epochs from 1, as the epoch lines count
    assert rows[best].endswith("<- best") and rows[onset].endswith("overfitting")
    assert not rows[best - 1].endswith(("best", "overfitting"))


def test_early_stopping_stops_patience_after_the_best_and_restores_it(workdir, engine):
    # Ten times the lecture's rate: the best epoch comes near 20 instead of 80, the stop ten
    # epochs later, and the mechanism is the same.
    out = _ok(run_cli("run", JOBS / "diabetes_mlp.yaml", "--np", 2,
                      "--set", "training.early_stopping=true", "--set", "tracking.log_model=true",
                      "--set", "training.learning_rate=0.01", *on_engine(engine), cwd=workdir))
    said = re.search(r"early stopping at epoch (\d+) \(patience (\d+)\): best weights of epoch "
                     r"(\d+) restored, val_loss ([\d.]+) \(best ([\d.]+)\)", out)
    assert said, out[-2000:]
    stopped, patience, best = (int(said.group(i)) for i in (1, 2, 3))
    assert best < stopped <= best + patience + 1
    assert float(said.group(4)) == pytest.approx(float(said.group(5)), abs=2e-6)  # the best, measured
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("diabetes_mlp").experiment_id])[0]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == stopped
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.keras"]


def test_a_job_requeued_past_the_cap_fails_with_the_reason(workdir):
    """A job that dies on every attempt must not loop: once SLURM's restart count passes the
    partition's max_requeues (exported by the batch script), the worker ends the run FAILED."""
    step = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_RESTART_COUNT": "3", "HARNESS_MAX_REQUEUES": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    from harness.spec import manifest
    from harness.spec.loader import load_spec
    spec = load_spec(JOBS / "synthetic.yaml", ["data.samples_per_epoch=64"])
    launch = manifest.write(manifest.new("submit", [manifest.Point(0, spec)], manifest.Layout(1),
                                         f"sqlite:///{workdir / 'mlflow.db'}", True), workdir / "l")
    done = subprocess.run([sys.executable, "-m", "harness.runtime.worker", "--manifest",
                           str(launch.path)], cwd=workdir,
                          env={**os.environ, **step}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "requeued 3 times, more than the partition's max_requeues=2" in done.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])[0]
    assert run.info.status == "FAILED" and "max_requeues=2" in run.data.tags["failure_reason"]
    assert run.data.tags["slurm.job_id"] == "77"
