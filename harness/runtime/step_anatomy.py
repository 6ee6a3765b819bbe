"""Where an epoch's training time went, and how far the steps run from the hardware's peak.

Each epoch logs
- ``time/data_wait_fraction``: the steps waiting for their batch (measured per step call, by
  ``InputWaitClock``);
- ``time/compute_fraction``: the forward and backward pass of the epoch's steps, timed alone on
  this rank (one batch, no allreduce, after the first epoch has compiled everything), over the
  epoch's training time;
- ``time/comm_fraction``: the rest: the allreduce and the waiting for the slowest rank, plus
  whatever the host did that the device did not hide.
The three add up to 1 by construction; what is measured is the compute and the input wait.

And, once the step is known, ``model/flops_per_sample`` (forward and backward, counted from the
traced step's graph), ``throughput/flops_per_sec_per_gpu`` (that times the samples per second
one process trains) and ``throughput/mfu``: that over the peak of the GPU (a table with its
sources, harness/runtime/hardware.py) or, on a CPU, over a matrix product timed in this process.
"""
from __future__ import annotations

import statistics
import time
from typing import Optional

import tensorflow as tf

from harness.runtime import hardware
from harness.runtime.callbacks import HostFree

TIMED_REPEATS = 5


class StepAnatomy(HostFree):
    def __init__(self, loss: str, batch, steps: int, mixed_precision: bool, jit_compile: bool):
        super().__init__()
        self.loss_fn = tf.keras.losses.get(loss)
        self.batch, self.steps = batch, steps
        self.mixed_precision, self.jit_compile = mixed_precision, jit_compile
        self.compute_s: Optional[float] = None  # one step's forward and backward, alone
        self.constants: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        if self.compute_s is None:  # after the first epoch: traced, compiled and warm
            try:
                self._calibrate()
            except Exception as e:  # a figure about the run must never end the run
                print(f"step anatomy: not measured on this model ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''})", flush=True)
                self.compute_s = 0.0
            logs.update(self.constants)
        train_s = logs.get("time/train_s")
        if not train_s or not self.compute_s:
            return
        waited = min(1.0, logs.get("time/data_wait_fraction", 0.0))
        compute = min(1.0 - waited, self.compute_s * self.steps / train_s)
        logs["time/compute_fraction"] = compute
        logs["time/comm_fraction"] = max(0.0, 1.0 - waited - compute)
        rate = logs.get("throughput/samples_per_sec_per_gpu")
        flops = self.constants.get("model/flops_per_sample")
        if rate and flops:
            achieved = flops * rate
            logs["throughput/flops_per_sec_per_gpu"] = achieved
            peak = self.constants.get("throughput/peak_flops_per_gpu")
            if peak:
                logs["throughput/mfu"] = achieved / peak

    def _calibrate(self) -> None:
        x, y = self.batch
        step = tf.function(self._forward_backward, jit_compile=self.jit_compile)
        for _ in range(2):  # trace, then warm
            _sync(step(x, y))
        times = []
        for _ in range(TIMED_REPEATS):
            began = time.perf_counter()
            _sync(step(x, y))
            times.append(time.perf_counter() - began)
        self.compute_s = statistics.median(times)
        samples = int(tf.nest.flatten(x)[0].shape[0])
        graph = step.get_concrete_function(x, y).graph
        self.constants["model/flops_per_sample"] = sum(hardware.step_flops(graph).values()) / samples
        name = hardware.gpu_name()
        peak = (hardware.peak_flops(name, self.mixed_precision) if name
                else hardware.cpu_matmul_flops())
        if peak:
            self.constants["throughput/peak_flops_per_gpu"] = peak

    def _forward_backward(self, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self.loss_fn(y, self.model(x, training=True)))
        return tape.gradient(loss, self.model.trainable_variables)


def _sync(tensors) -> None:
    """Wait for the device: read one element of the last gradient back to the host."""
    last = [t for t in tensors if t is not None][-1]
    tf.reshape(last, [-1])[:1].numpy()


def first_batch(dataset: tf.data.Dataset, batch_size: int):
    """One training-sized batch (the validation set's first, cut to the training batch)."""
    for x, y in dataset.take(1):
        return tf.nest.map_structure(lambda t: t[:batch_size], (x, y))
    return None


def for_run(job, data, training) -> Optional[StepAnatomy]:
    """The callback for a run, timed on a batch of the rank's validation share (None when the
    share is empty: nothing to time on)."""
    batch = first_batch(data.validation, training.batch_size)
    if batch is None:
        return None
    return StepAnatomy(job.LOSS, batch, data.steps, training.mixed_precision, training.jit_compile)
