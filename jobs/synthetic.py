"""Throughput job: ResNet-50 or a small CNN on random images, like Horovod's synthetic benchmark.

::

    .venv/bin/harness run jobs/synthetic.yaml --np 2
    .venv/bin/harness run jobs/synthetic.yaml --np 2 --set data.model=resnet50 --set data.image_size=224
    .venv/bin/harness run jobs/synthetic.yaml --np 2 --set data.model=gpu_standin --set data.device_ms=40

The images are made once on the device and repeated, so the figure is the
model's and the communication's speed, not the input pipeline's.  Images/s
per process and in total are in each epoch line (warm-up excluded).

``gpu_standin`` is a GPU node's step on a machine without one: one dense layer carries the
gradients (as many bytes as the small CNN's), and each step waits ``device_ms`` with the host
core idle, as a host waits for its GPU's kernels.  On CPU-only test nodes it keeps the core free
for the communication, which is the situation the scaling model describes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from harness.spec.jobs import Splits
from harness.spec.schema import FieldError, doc

LOSS = "sparse_categorical_crossentropy"
METRICS = ()
MODELS = ("small_cnn", "resnet50", "gpu_standin")


@dataclass(frozen=True)
class Data:
    model: str = field(default="small_cnn", metadata=doc("small_cnn, resnet50 or gpu_standin"))
    image_size: int = field(default=32, metadata=doc("square images, pixels; resnet50 needs >= 32"))
    num_classes: int = field(default=10, metadata=doc("classes of the random labels"))
    samples_per_epoch: int = field(default=2048, metadata=doc("images per epoch over all processes"))
    device_ms: float = field(default=40.0, metadata=doc(
        "gpu_standin: the device's time per step, ms, the host idle meanwhile"))

    def __post_init__(self):
        if self.model not in MODELS:
            raise FieldError("model", self.model, "use one of " + ", ".join(MODELS))
        if not 32 <= self.image_size <= 512:
            raise FieldError("image_size", self.image_size, "use 32..512")
        if not 2 <= self.num_classes <= 10000:
            raise FieldError("num_classes", self.num_classes, "use 2..10000")
        if self.samples_per_epoch < 1:
            raise FieldError("samples_per_epoch", self.samples_per_epoch, "use a positive number")
        if not 0 <= self.device_ms <= 60_000:
            raise FieldError("device_ms", self.device_ms, "use 0..60000 ms")


def load_data(data: Data, seed: int) -> Splits:
    """Index arrays only: the harness shards them; ``device_batches`` makes the pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, data.num_classes, data.samples_per_epoch)
    x = np.zeros((data.samples_per_epoch, 1), np.float32)
    return Splits(x, labels, x[:64], labels[:64])


def device_batches(data: Data, batch_size: int, steps: int, seed: int):
    """One random batch made on the device and repeated ``steps`` times per epoch."""
    import tensorflow as tf
    images = tf.random.stateless_uniform((batch_size, data.image_size, data.image_size, 3), (seed, 0))
    labels = tf.random.stateless_uniform((batch_size,), (seed, 1), maxval=data.num_classes,
                                         dtype=tf.int64)
    return tf.data.Dataset.from_tensors((images, labels)).repeat(steps)


def build_model(data: Data):
    import tensorflow as tf
    shape = (data.image_size, data.image_size, 3)
    if data.model == "resnet50":
        return tf.keras.applications.ResNet50(weights=None, input_shape=shape,
                                              classes=data.num_classes)
    layers = tf.keras.layers
    if data.model == "gpu_standin":
        return gpu_standin(data, shape)
    return tf.keras.Sequential([
        layers.Input(shape=shape),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"),
        layers.Dense(data.num_classes, activation="softmax"),
    ])


def gpu_standin(data: Data, shape: tuple):
    """Flatten, a 100-unit dense layer (~315k weights at 32 x 32 x 3: the small CNN's 1.26 MB of
    gradients), the output layer; the first layer waits ``device_ms`` per step."""
    import tensorflow as tf
    layers = tf.keras.layers
    seconds = data.device_ms / 1e3

    def device_busy():
        time.sleep(seconds)  # the host thread waits for its "GPU", and leaves the core idle
        return np.float32(0.0)

    def wait(x):
        done = tf.py_function(device_busy, [], tf.float32)
        done.set_shape(())
        return x + tf.cast(done, x.dtype)  # the step depends on it, so it runs every step

    return tf.keras.Sequential([
        layers.Input(shape=shape), layers.Lambda(wait), layers.Flatten(),
        layers.Dense(100, activation="relu"), layers.Dense(data.num_classes, activation="softmax"),
    ])
