#!/usr/bin/env python3
"""What the input-wait clock costs a step: a pipeline with and without its stamp.

    .venv/bin/python benches/input_stamp.py [--steps 3000] [--rounds 3]

``time/data_wait_fraction`` needs the time each batch reached the step: the harness stamps it
with a host call placed after the prefetch, so it runs in the step's own request, on the
critical path of every step (harness/runtime/inputs.py, InputWait).  This times a step that
only reads its batch (the lens finder's 48x48x3 float32 images, batch 32; one thread, as the
harness's CPU ranks run) from three pipelines, in alternated rounds: none stamped, stamped by
the harness (``tf.numpy_function``), and stamped with ``tf.py_function`` (what it used before).
It prints microseconds per step and the stamp's cost over the unstamped pipeline.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from harness.runtime.inputs import InputWait


def pipeline(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(32).prefetch(tf.data.AUTOTUNE).repeat()


def py_function_stamped(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The stamp as it was: a py_function per batch."""
    delivered = []

    def stamp():
        delivered.append(time.perf_counter())
        return np.int64(0)

    def passed_on(*batch):
        token = tf.py_function(stamp, [], tf.int64)
        with tf.control_dependencies([token]):
            return tuple(tf.identity(t) for t in batch)
    return dataset.map(passed_on)


@tf.function
def read_step(iterator):
    images, labels = next(iterator)
    return tf.reduce_sum(images) + tf.reduce_sum(labels)


def microseconds_per_step(dataset: tf.data.Dataset, steps: int) -> float:
    iterator = iter(dataset)
    read_step(iterator)  # traced outside the clock
    began = time.perf_counter()
    for _ in range(steps):
        read_step(iterator)
    return (time.perf_counter() - began) / steps * 1e6


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    x = rng.random((4800, 48, 48, 3), dtype=np.float32)
    y = np.zeros(4800, np.float32)
    variants = {"unstamped": lambda: pipeline(x, y),
                "harness (numpy_function)": lambda: InputWait().stamp(pipeline(x, y)),
                "py_function (before)": lambda: py_function_stamped(pipeline(x, y))}
    times = {name: [] for name in variants}
    for round_ in range(args.rounds):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            times[name].append(microseconds_per_step(variants[name](), args.steps))
            print(f"  round {round_ + 1}: {name:<26} {times[name][-1]:7.0f} us/step", flush=True)
    base = statistics.median(times["unstamped"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26} median {median:7.0f} us/step ({min(values):.0f}..{max(values):.0f}), "
              f"stamp cost {median - base:+5.0f} us/step, ratio {median / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
