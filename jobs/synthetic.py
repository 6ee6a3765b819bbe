"""Throughput job: ResNet-50 or a small CNN on random images, like Horovod's synthetic benchmark.

::

    .venv/bin/harness run jobs/synthetic.yaml --np 2
    .venv/bin/harness run jobs/synthetic.yaml --np 2 --set data.model=resnet50 --set data.image_size=224

The images are made once on the device and repeated, so the figure is the
model's and the communication's speed, not the input pipeline's.  Images/s
per process and in total are in each epoch line (warm-up excluded).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.spec.jobs import Splits
from harness.spec.schema import FieldError, doc

LOSS = "sparse_categorical_crossentropy"
METRICS = ()
MODELS = ("small_cnn", "resnet50")


@dataclass(frozen=True)
class Data:
    model: str = field(default="small_cnn", metadata=doc("small_cnn or resnet50"))
    image_size: int = field(default=32, metadata=doc("square images, pixels; resnet50 needs >= 32"))
    num_classes: int = field(default=10, metadata=doc("classes of the random labels"))
    samples_per_epoch: int = field(default=2048, metadata=doc("images per epoch over all processes"))

    def __post_init__(self):
        if self.model not in MODELS:
            raise FieldError("model", self.model, "use one of " + ", ".join(MODELS))
        if not 32 <= self.image_size <= 512:
            raise FieldError("image_size", self.image_size, "use 32..512")
        if not 2 <= self.num_classes <= 10000:
            raise FieldError("num_classes", self.num_classes, "use 2..10000")
        if self.samples_per_epoch < 1:
            raise FieldError("samples_per_epoch", self.samples_per_epoch, "use a positive number")


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
    return tf.keras.Sequential([
        layers.Input(shape=shape),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"),
        layers.Dense(data.num_classes, activation="softmax"),
    ])
