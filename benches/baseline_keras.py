#!/usr/bin/env python3
"""The baselines of benches/step_pace.py: a job's model trained as plain Keras, or as bare Horovod.

    .venv/bin/python benches/baseline_keras.py SPEC [--set KEY=VALUE ...]
    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python benches/baseline_keras.py SPEC --horovod

What a physicist would write by hand: the job's own ``load_data`` and ``build_model`` (read
through the spec, so the data, model, batch and optimizer are the harness run's), then
``from_tensor_slices().shuffle().batch().prefetch()`` and ``model.fit``.  With ``--horovod``, as in
Horovod's Keras example: each rank takes its shard, ``hvd.DistributedOptimizer``, and the
broadcast and metric-averaging callbacks.  One thread per process on a CPU, as the harness sets.
Its only addition is a line per epoch with the samples per second (an epoch hook: it does not
touch the steps); the first epoch (tracing) is left out by the caller.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from harness.spec.jobs import resolve_job
from harness.spec.loader import load_spec

OPTIMIZERS = {"sgd": lambda lr: tf.keras.optimizers.legacy.SGD(lr, momentum=0.9),
              "adam": tf.keras.optimizers.legacy.Adam,
              "rmsprop": tf.keras.optimizers.legacy.RMSprop}


class EpochRate(tf.keras.callbacks.Callback):
    def __init__(self, samples: int, chief: bool):
        super().__init__()
        self.samples, self.chief = samples, chief

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.chief:
            rate = self.samples / (time.perf_counter() - self.started)
            print(f"epoch {epoch + 1}: {rate:.0f} samples/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--horovod", action="store_true")
    args = p.parse_args()
    rank, size, hvd = 0, 1, None
    if args.horovod:
        import horovod.tensorflow.keras as hvd
        hvd.init()
        rank, size = hvd.rank(), hvd.size()
    if not tf.config.list_physical_devices("GPU"):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    spec = load_spec(args.spec, args.overrides)
    job = resolve_job(spec.job, __import__("pathlib").Path(spec.spec_path).parent)
    t = spec.training
    tf.keras.utils.set_random_seed(t.seed)
    splits = job.load_data(spec.data, t.seed)
    mine = np.array_split(np.arange(len(splits.x_train)), size)[rank]
    x, y = splits.x_train[mine], splits.y_train[mine]
    data = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=t.seed + rank)
            .batch(t.batch_size).prefetch(tf.data.AUTOTUNE))
    model = job.build_model(spec.data)
    optimizer = OPTIMIZERS[t.optimizer](t.learning_rate * size)
    callbacks = [EpochRate(len(splits.x_train), rank == 0)]
    if hvd is not None:
        optimizer = hvd.DistributedOptimizer(optimizer)
        callbacks[:0] = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                         hvd.callbacks.MetricAverageCallback()]
    model.compile(optimizer=optimizer, loss=job.LOSS, metrics=list(getattr(job, "METRICS", ())))
    model.fit(data, epochs=t.epochs, verbose=0, callbacks=callbacks)


if __name__ == "__main__":
    main()
