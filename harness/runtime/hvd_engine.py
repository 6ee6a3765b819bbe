"""The Horovod engine: TensorFlow 2.15, Keras 2 legacy optimizers, Gloo or MPI underneath."""
from __future__ import annotations

import contextlib

import horovod.tensorflow as hvd_core  # object collectives are not in the Keras module
import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf

from harness.runtime.collectives import time_allreduce

_OPTIMIZERS = {
    # Legacy Keras optimizers: the ones Horovod 0.28's DistributedOptimizer wraps on TF 2.15.
    "sgd": lambda lr: tf.keras.optimizers.legacy.SGD(learning_rate=lr, momentum=0.9),
    "adam": lambda lr: tf.keras.optimizers.legacy.Adam(learning_rate=lr),
    "rmsprop": lambda lr: tf.keras.optimizers.legacy.RMSprop(learning_rate=lr),
    "adagrad": lambda lr: tf.keras.optimizers.legacy.Adagrad(learning_rate=lr),
    "adadelta": lambda lr: tf.keras.optimizers.legacy.Adadelta(learning_rate=lr),
}


class HorovodEngine:
    name = "horovod"
    checkpoint_kind = "tf.train"

    def build_info(self) -> dict:
        return {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built(), "nccl": bool(hvd.nccl_built()),
                "controller": "mpi" if hvd.mpi_enabled() else "gloo"}

    def join(self, pin_device, placement):
        hvd.init()  # horovodrun's or MPI's world; init_process checks it against ``placement``
        device = pin_device(hvd.local_rank())
        return hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), device

    def allgather_object(self, obj):
        return list(hvd_core.allgather_object(obj))

    def broadcast_object(self, obj, root=0):
        return hvd_core.broadcast_object(obj, root_rank=root)

    def agree_max(self, values):
        return hvd_core.allreduce(tf.constant(np.asarray(values, np.float64)), op=hvd_core.Max,
                                  name="harness.agree_max").numpy()

    def allreduce_mean(self, value):
        return float(hvd_core.allreduce(tf.constant(value, tf.float64), op=hvd_core.Average,
                                        name="harness.mean"))

    def scope(self):
        return contextlib.nullcontext()

    def optimizer(self, name, rate, fp16_allreduce, backward_passes_per_step=1):
        compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
        return hvd.DistributedOptimizer(_OPTIMIZERS[name](rate), compression=compression,
                                        backward_passes_per_step=backward_passes_per_step)

    def compile(self, model, optimizer, loss, metrics, steps_per_execution, jit_compile):
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                      steps_per_execution=steps_per_execution)
        if jit_compile:
            model.train_step = xla_train_step(model)

    def prepare(self, model, x_sample, y_sample):
        # Slots exist from the start: a checkpoint taken before the first step holds them too.
        model.optimizer._create_all_weights(model.trainable_variables)

    def set_learning_rate(self, optimizer, rate):
        tf.keras.backend.set_value(optimizer.lr, rate)

    def optimizer_variables(self, optimizer):
        return list(optimizer.variables())

    def start_equal(self, model):
        # What Horovod's BroadcastGlobalVariablesCallback does at the first batch's end, done once
        # before fit: that callback's batch hook made Keras sync the host after every step.
        hvd_core.broadcast_variables(model.variables, root_rank=0)
        hvd_core.broadcast_variables(model.optimizer.variables(), root_rank=0)

    def sync_callbacks(self):
        # Average metrics over ranks so every later callback decides the same on every rank
        # (an epoch hook: no per-step cost).
        return [hvd.callbacks.MetricAverageCallback()]

    def distribute(self, dataset, training=False):
        return dataset

    def fit_options(self, steps):
        return {}

    def chief_model(self, model, job):
        return model

    def start_timeline(self, path):
        # Every rank calls it (HOROVOD_TIMELINE=DYNAMIC at start-up); the coordinator writes.
        hvd_core.start_timeline(path, mark_cycles=True)

    def stop_timeline(self):
        hvd_core.stop_timeline()

    def time_allreduce(self, nbytes, dtype="float32"):
        tensor = tf.ones([max(1, nbytes // tf.as_dtype(dtype).size)], dtype=dtype)
        name = f"probe.{dtype}.{nbytes}"
        return time_allreduce(
            lambda: hvd_core.allreduce(tensor, op=hvd_core.Sum, name=name).numpy(),
            lambda: hvd_core.allreduce(tf.constant(0), name="probe.barrier").numpy(),
            lambda v: int(hvd_core.allreduce(tf.constant(v), op=hvd_core.Max, name="probe.agree")))


def xla_train_step(model):
    """Keras' train step with the forward and backward pass compiled by XLA and Horovod's
    allreduce outside it: Horovod's ops have no XLA kernels (``jit_compile=True`` in
    ``model.compile`` fails on "No registered 'HorovodAllreduce' OpKernel for XLA_CPU_JIT").
    Since TensorFlow 2.4 the DistributedOptimizer allreduces in ``_compute_gradients``, which
    this step replaces, so it calls the optimizer's ``_allreduce`` itself."""

    @tf.function(jit_compile=True)
    def forward_backward(x, y, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        return y_pred, tape.gradient(loss, model.trainable_variables)

    def train_step(data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        y_pred, grads = forward_backward(x, y, sample_weight)
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(model.optimizer._allreduce(grads, variables), variables))
        return model.compute_metrics(x, y, y_pred, sample_weight)

    return train_step
