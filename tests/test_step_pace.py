"""Steps at the hardware's pace: no host sync the harness causes, compiled steps, settings that fit
the card, a profile on request, and the fraction of peak.

The figures themselves (harness / plain Keras, steps_per_execution 8 / 1, ...) are measured by
benches/step_pace.py, never asserted here.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from conftest import REPO, run_cli
from harness.errors import UserError
from harness.runtime import callbacks as cb
from harness.runtime import hardware
from harness.runtime.lr import rate_at

DIABETES = REPO / "jobs" / "diabetes_mlp.yaml"


class _OneRank:
    """The engine seen by one process: collectives return its own values."""

    def agree_max(self, values):
        return np.asarray(values)

    def set_learning_rate(self, optimizer, rate):
        tf.keras.backend.set_value(optimizer.lr, rate)


def _tiny_model(steps_per_execution: int = 1) -> tf.keras.Model:
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
    model.compile(tf.keras.optimizers.legacy.SGD(0.1), "mse", steps_per_execution=steps_per_execution)
    return model


def _data(steps: int, batch: int = 8) -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(steps * batch, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(batch).repeat()


def test_the_per_step_callbacks_leave_each_steps_logs_on_the_device():
    """Keras 2 hands a batch hook the step's logs as tensors (no wait for the step) only when
    every callback with batch hooks says it reads none: the harness's do, so a probe after them
    receives tensors.  With Horovod's per-batch broadcast callback in the chain, as before, the
    probe receives Python numbers: Keras waited for every step."""
    steps = 6

    class Probe(cb.HostFree):
        def __init__(self):
            super().__init__()
            self.kinds = []

        def on_train_batch_end(self, batch, logs=None):
            self.kinds.append(type(logs["loss"]).__name__)

    def kinds_seen(extra: list) -> set:
        probe = Probe()
        chain = [cb.ScheduledRate(0.1, 0.2, 1, steps, _OneRank()),
                 cb.EpochClock(np.full(steps, 8), 1), cb.PreemptionGuard(_OneRank()),
                 cb.HoldPoint([99], "", None, True, [999], steps), *extra, probe]
        _tiny_model().fit(_data(steps), epochs=2, steps_per_epoch=steps, verbose=0, callbacks=chain)
        return set(probe.kinds)

    assert kinds_seen([]) == {"EagerTensor"}

    class SyncingBroadcast(tf.keras.callbacks.Callback):  # as hvd's BroadcastGlobalVariables
        def on_batch_end(self, batch, logs=None):
            pass
    assert kinds_seen([SyncingBroadcast()]) == {"float"}


def test_with_steps_per_execution_the_rate_is_set_for_each_calls_first_step():
    """Four steps a call: the hooks run once a call, the rate is the schedule's at the call's
    first step, and the ramp ends at the same step as it does one step a call."""
    steps, seen = 12, {}

    class Rate(cb.HostFree):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            seen[(self.epoch, batch)] = float(tf.keras.backend.get_value(self.model.optimizer.lr))

    model = _tiny_model(steps_per_execution=4)
    model.fit(_data(steps), epochs=2, steps_per_epoch=steps, verbose=0,
              callbacks=[cb.ScheduledRate(0.1, 0.4, 1, steps, _OneRank()), Rate()])
    assert sorted(seen) == [(e, b) for e in (0, 1) for b in (0, 4, 8)]
    for (epoch, batch), rate in seen.items():
        assert rate == pytest.approx(rate_at(epoch + batch / steps, 0.1, 0.4, 1)), (epoch, batch)
    assert seen[(1, 0)] == pytest.approx(0.4)  # the target from epoch 2's first step, as before


def test_the_flops_of_a_small_dense_model_are_the_hand_count():
    """20 -> 30 -> 5, no biases, batch 8: forward 2 x (20x30 + 30x5) = 1500 FLOPs a sample;
    backward 2 x 30x5 (weights) + 2 x 30x5 (into the hidden layer) + 2 x 20x30 (weights; the
    input needs no gradient) = 1800; the matrix products count 3300 a sample, and the loss adds
    a few dozen element-wise operations."""
    from harness.runtime.step_anatomy import StepAnatomy
    model = tf.keras.Sequential([tf.keras.layers.Input((20,)),
                                 tf.keras.layers.Dense(30, use_bias=False),
                                 tf.keras.layers.Dense(5, use_bias=False)])
    anatomy = StepAnatomy("mse", None, 1, False, False)
    anatomy.set_model(model)
    x, y = tf.zeros((8, 20)), tf.zeros((8, 5))
    graph = tf.function(anatomy._forward_backward).get_concrete_function(x, y).graph
    ops = hardware.step_flops(graph)
    products = sum(v for name, v in ops.items() if name.endswith(("MatMul", "MatMul_1")))
    assert products / 8 == 2 * (20 * 30 + 30 * 5) + 2 * 30 * 5 + 2 * 30 * 5 + 2 * 20 * 30 == 3300
    assert 3300 < sum(ops.values()) / 8 < 3300 * 1.05


def test_gpu_peaks_come_from_the_table_by_name_and_the_cpu_peak_is_measured():
    assert hardware.peak_flops("NVIDIA GeForce RTX 2080 Ti", False) == 13.4e12
    assert hardware.peak_flops("NVIDIA GeForce RTX 2080 Ti", True) == 53.8e12
    assert hardware.peak_flops("NVIDIA H100 PCIe", True) == 756e12  # before the plain H100 entry
    assert hardware.peak_flops("NVIDIA H200", False) == 67e12
    assert hardware.peak_flops("Some Future GPU", False) is None
    assert 1e8 < hardware.cpu_matmul_flops(n=256, repeats=3) < 1e13


def test_mixed_precision_is_refused_on_a_pascal_partition_and_gpu(workdir):
    from harness.runtime.trainer import check_mixed_precision_pays
    done = run_cli("render", DIABETES, "--partition", "gtx1080ti",
                   "--set", "training.mixed_precision=true", cwd=workdir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.fullmatch(r"error: training\.mixed_precision=true: partition gtx1080ti \(NVIDIA "
                        r"GeForce GTX 1080 Ti, compute capability 6\.1\) .*\n", done.stderr)
    ok = run_cli("render", DIABETES, "--partition", "rtx2080ti",
                 "--set", "training.mixed_precision=true", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(UserError, match=r"GTX 1050 Ti, compute capability 6\.1"):
        check_mixed_precision_pays("NVIDIA GeForce GTX 1050 Ti", (6, 1))
    check_mixed_precision_pays("NVIDIA GeForce RTX 2080 Ti", (7, 5))
    check_mixed_precision_pays("", None)  # a CPU: Keras runs it (slowly), nothing to refuse


def test_communication_settings_reach_the_batch_script_over_the_partitions(workdir):
    done = run_cli("render", DIABETES, "--partition", "gtx1080ti",
                   "--set", "communication.fusion_threshold_mb=64",
                   "--set", "communication.cycle_time_ms=2.5",
                   "--set", "communication.autotune=true",
                   "--set", "communication.hierarchical_allreduce=true",
                   "--set", "communication.nccl={NCCL_SOCKET_IFNAME: ib0, NCCL_SOCKET_NTHREADS: 4}",
                   cwd=workdir)
    assert done.returncode == 0, done.stderr
    exports = dict(re.findall(r"^export (\w+)=(.*)$", done.stdout, re.M))
    assert exports["HOROVOD_FUSION_THRESHOLD"] == str(64 * 1024 * 1024)
    assert exports["HOROVOD_CYCLE_TIME"] == "2.5" and exports["HOROVOD_AUTOTUNE"] == "1"
    assert exports["HOROVOD_HIERARCHICAL_ALLREDUCE"] == "1"
    assert exports["NCCL_SOCKET_IFNAME"] == "ib0"  # the spec's, over the partition's eth0
    assert exports["NCCL_SOCKET_NTHREADS"] == "4"
    refused = {
        "training.engine=tf": ("communication.autotune=true",
                               r"communication\.autotune=True: a Horovod setting"),
        "training.epochs=2": ("communication.nccl={SOCKET_IFNAME: ib0}",
                              r"nccl\.SOCKET_IFNAME='ib0': names start with NCCL_"),
    }
    for first, (second, message) in refused.items():
        bad = run_cli("render", DIABETES, "--set", first, "--set", second, cwd=workdir)
        assert bad.returncode == 2 and re.search(message, bad.stderr), bad.stderr
        assert "Traceback" not in bad.stderr


def test_the_tf_engine_refuses_compiled_steps_on_two_processes_before_anything_starts(workdir):
    done = run_cli("run", DIABETES, "--np", "2", "--set", "training.engine=tf",
                   "--set", "training.steps_per_execution=4", cwd=workdir)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: training.steps_per_execution=4, training.jit_compile="
                                  "false: the tf engine cannot run them on 2 processes")
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()
    # A sweep point or a scaling size the engine cannot run is refused before any run opens.
    sweep = run_cli("sweep", DIABETES, "--local", "--np", "2", "--set", "training.engine=tf",
                    "--grid", "training.steps_per_execution=1,4", cwd=workdir)
    assert sweep.returncode == 2, sweep.stderr
    assert re.match(r"error: point 1 \(\S+\): training\.steps_per_execution=4, .*cannot run "
                    r"them on 2 processes", sweep.stderr), sweep.stderr
    scale = run_cli("scale", DIABETES, "--local", "--gpus", "1,2", "--set", "training.engine=tf",
                    "--set", "training.jit_compile=true", cwd=workdir)
    assert scale.returncode == 2, scale.stderr
    assert scale.stderr.startswith("error: training.steps_per_execution=1, training.jit_compile="
                                   "true: the tf engine cannot run them on 2 processes"), scale.stderr
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()
    bad = run_cli("run", DIABETES, "--profile-steps", "9:3", cwd=workdir)
    assert bad.returncode == 2 and "profile_steps='9:3': use A:B" in bad.stderr, bad.stderr


@pytest.mark.multiproc
def test_a_profiled_compiled_run_on_two_ranks_leaves_traces_that_open(workdir, pima_csv):
    """Two Horovod ranks, 3 steps a call, the forward and backward pass compiled by XLA, steps
    40..50 profiled: the step trace holds exactly those steps, Horovod's timeline shows the
    allreduces, TensorFlow's trace shows Keras' train steps, all three parse as JSON; each
    epoch's time split adds up to one, and the FLOPs and fraction of peak are logged."""
    done = run_cli("run", DIABETES, "--np", "2", "--set", f"data.csv={pima_csv}",
                   "--set", "training.epochs=2", "--set", "training.steps_per_execution=3",
                   "--set", "training.jit_compile=true", "--profile-steps", "40:50", cwd=workdir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^profile: steps 40\.\.50 in ", done.stdout, re.M), done.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("diabetes_mlp").experiment_id])[0]
    local = client.download_artifacts(run.info.run_id, "profile", str(workdir))

    steps = json.loads((workdir / "profile" / "steps.json").read_text())["traceEvents"]
    covered = [s for e in steps for s in range(e["args"]["first_step"], e["args"]["last_step"] + 1)]
    # 31 steps an epoch, 3 a call: calls begin at batches 0, 3, ..., 30 of each epoch; the ones
    # holding steps 40..50 begin at steps 38 (epoch 2, batch 6), 41, ..., 50.
    assert covered == list(range(38, 51)) + [51, 52], covered
    assert all(e["ph"] == "X" and e["dur"] > 0 for e in steps)

    timeline = json.loads((workdir / "profile" / "horovod_timeline.json").read_text())
    assert any(e.get("name") == "ALLREDUCE" for e in timeline), {e.get("name") for e in timeline}
    trace = json.loads((workdir / "profile" / "tensorflow_trace.json").read_text())
    assert any(re.fullmatch(r"train( \d+)?", e.get("name", "")) for e in trace["traceEvents"])
    assert list((workdir / "profile" / "tensorflow").rglob("*.xplane.pb")), local  # TensorBoard's

    for epoch in range(2):
        split = [client.get_metric_history(run.info.run_id, f"time/{k}_fraction")[epoch].value
                 for k in ("compute", "comm", "data_wait")]
        assert all(0 <= v <= 1 for v in split) and sum(split) == pytest.approx(1, abs=0.01), split
    metrics = run.data.metrics
    # 8 -> 12 -> 8 -> 1: products 2 x 200 forward, 2 x 200 + 2 x (96 + 8) backward = 1008,
    # plus the biases, activations, dropout and loss element-wise.
    assert 1008 <= metrics["model/flops_per_sample"] < 1008 * 1.2
    assert 0 < metrics["throughput/mfu"] < 1
    assert metrics["throughput/flops_per_sec_per_gpu"] == pytest.approx(
        metrics["model/flops_per_sample"] * metrics["throughput/samples_per_sec_per_gpu"])


def test_harness_scale_suggests_mixed_precision_only_on_a_partition_with_tensor_cores():
    from harness.scaling.sweep import SweepPlan, mixed_precision_pays
    from harness.spec.loader import load_spec

    def pays(partition: str, local: bool = False, *sets: str) -> bool:
        spec = load_spec(DIABETES, [f"resources.partition={partition}", *sets])
        return mixed_precision_pays(SweepPlan(str(DIABETES), [], [1, 2], 3, local, "auto", "lars"), spec)
    assert pays("rtx2080ti")  # Turing, 7.5
    assert not pays("gtx1080ti") and not pays("gtx1050ti")  # Pascal, 6.1
    assert not pays("rtx2080ti", True)  # a local sweep: this machine's devices, unknown
    assert not pays("rtx2080ti", False, "training.mixed_precision=true")  # already on
