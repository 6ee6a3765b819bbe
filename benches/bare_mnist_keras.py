#!/usr/bin/env python3
"""The baseline for the fixed-cost benchmark: the MNIST MLP as a bare Horovod Keras script.

    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python benches/bare_mnist_keras.py --data F

What a physicist would write by hand from Horovod's Keras example: load the npz, shard it by
rank, build the lecture's 784-392-196-10 MLP, wrap the optimizer, broadcast, average metrics,
fit with validation, rank 0 prints a line per epoch.  No tracking, telemetry, checkpoints or
report: the harness's whole-process time against this one is the harness's fixed cost.
"""
from __future__ import annotations

import argparse

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="a Keras mnist.npz")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit", type=int, default=12000)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()

    hvd.init()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # as the harness does on a CPU
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with np.load(args.data) as f:
        x, y = f["x_train"][:args.limit] / 255.0, f["y_train"][:args.limit]
        xv, yv = f["x_test"] / 255.0, f["y_test"]
    mine = np.array_split(np.arange(len(x)), hvd.size())[hvd.rank()]
    data = tf.data.Dataset.from_tensor_slices((x[mine].astype("float32"), y[mine]))
    data = data.shuffle(len(mine), seed=hvd.rank()).batch(args.batch)
    val = np.array_split(np.arange(len(xv)), hvd.size())[hvd.rank()]
    model = tf.keras.Sequential([
        tf.keras.layers.Flatten(input_shape=(28, 28)),
        tf.keras.layers.Dense(392, activation="relu"),
        tf.keras.layers.Dense(196, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    opt = tf.keras.optimizers.legacy.RMSprop(learning_rate=0.001 * hvd.size())
    model.compile(optimizer=hvd.DistributedOptimizer(opt), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data, validation_data=(xv[val].astype("float32"), yv[val]), epochs=args.epochs,
              verbose=2 if hvd.rank() == 0 else 0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                         hvd.callbacks.MetricAverageCallback()])


if __name__ == "__main__":
    main()
