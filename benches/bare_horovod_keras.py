#!/usr/bin/env python3
"""The baseline for the harness-overhead benchmark: a bare Horovod Keras script, no harness code.

    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python benches/bare_horovod_keras.py

It trains the same small CNN as ``jobs/synthetic.py`` (copied here on
purpose, so the baseline owes nothing to the harness) on the same random
device-made batches, with the same optimizer, batch size, LR scaling and CPU
thread settings, and prints one line per epoch in the harness's format
("epoch N/E ... X samples/s", first step of the first epoch excluded) so both
are read the same way.  Nothing is tracked, checkpointed or sampled.
"""
from __future__ import annotations

import argparse
import time

import horovod.tensorflow.keras as hvd
import tensorflow as tf


def small_cnn(image_size: int, classes: int) -> tf.keras.Model:
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.Input(shape=(image_size, image_size, 3)),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"),
        layers.Dense(classes, activation="softmax"),
    ])


class Rate(tf.keras.callbacks.Callback):
    """Samples/s over all ranks from batch-end times, the first step of the first epoch left out."""

    def __init__(self, global_batch: int, epochs: int):
        super().__init__()
        self.global_batch, self.epochs, self.first = global_batch, epochs, True

    def on_epoch_begin(self, epoch, logs=None):
        self.times = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        skip = 1 if self.first else 0  # graph tracing in the first step
        self.first = False
        steps = len(self.times) - 1 - skip
        rate = steps * self.global_batch / (self.times[-1] - self.times[skip])
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1}/{self.epochs}  loss {logs['loss']:.4f}  {rate:.0f} samples/s",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples", type=int, default=8192, help="images per epoch over all ranks")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args()

    hvd.init()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # as the harness does on a CPU
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(42 + hvd.rank())
    steps = args.samples // (args.batch * hvd.size())
    images = tf.random.stateless_uniform((args.batch, args.image_size, args.image_size, 3),
                                         (hvd.rank(), 0))
    labels = tf.random.stateless_uniform((args.batch,), (hvd.rank(), 1), maxval=10, dtype=tf.int64)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat(steps)

    model = small_cnn(args.image_size, 10)
    opt = tf.keras.optimizers.legacy.SGD(learning_rate=0.01 * hvd.size(), momentum=0.9)
    model.compile(optimizer=hvd.DistributedOptimizer(opt), loss="sparse_categorical_crossentropy")
    model.fit(data, epochs=args.epochs, verbose=0, callbacks=[
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        Rate(args.batch * hvd.size(), args.epochs)])


if __name__ == "__main__":
    main()
