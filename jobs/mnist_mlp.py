"""The lecture's example 2: handwritten digits with an MLP 784-392-196-10.

Run it::

    .venv/bin/harness run jobs/mnist_mlp.yaml --np 2

The data is Keras's standard ``mnist.npz`` (arrays x_train, y_train, x_test,
y_test).  With ``data.path`` empty the Keras cache (~/.keras/datasets/mnist.npz)
is used; compute nodes have no internet, so fetch it once on a machine that has:
``python -c "import tensorflow as tf; tf.keras.datasets.mnist.load_data()"``.
As in the lecture, the test split serves as validation.

``data.path`` may also name a shard folder (``harness data pack mnist.npz DIR``): the harness
then streams it, each rank its own files, and ``preprocess`` scales each batch as ``load_data``
scales the arrays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from harness.spec.jobs import Splits, stage_field
from harness.spec.schema import FieldError, doc

LOSS = "sparse_categorical_crossentropy"
METRICS = ("accuracy",)
KERAS_CACHE = os.path.expanduser("~/.keras/datasets/mnist.npz")


@dataclass(frozen=True)
class Data:
    path: str = field(default="", metadata=doc("mnist.npz, or a shard folder (harness data pack); "
                                               "empty: the Keras cache", file=True))
    limit: int = field(default=0, metadata=doc("use only the first N training images; 0: all"))
    stage: str = stage_field()

    def __post_init__(self):
        if not self.path and not os.path.isfile(KERAS_CACHE):
            raise FieldError("path", self.path, f"no mnist.npz in the Keras cache ({KERAS_CACHE}); "
                             "fetch it where there is internet with python -c \"import tensorflow "
                             "as tf; tf.keras.datasets.mnist.load_data()\" or set data.path")
        if self.limit < 0:
            raise FieldError("limit", self.limit, "use 0 (all) or a positive number")
        if self.limit and os.path.isdir(self.path):
            raise FieldError("limit", self.limit, "applies to an .npz; a shard folder streams "
                             "every image it holds (pack fewer)")


def load_data(data: Data, seed: int) -> Splits:
    from harness.errors import UserError
    path = data.path or KERAS_CACHE
    try:
        with np.load(path) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"data.path={path!r}: not a Keras mnist.npz ({e})") from None
    if data.limit:
        x_train, y_train = x_train[:data.limit], y_train[:data.limit]
    scale = lambda x: (x / 255.0).astype(np.float32)  # noqa: E731  pixels 0..255 -> 0..1
    return Splits(scale(x_train), y_train.astype(np.int64), scale(x_test), y_test.astype(np.int64))


def preprocess(x, y):
    """A streamed batch as load_data gives the arrays: pixels 0..1 in float32, int64 labels."""
    import tensorflow as tf
    return tf.cast(x, tf.float32) / 255.0, tf.cast(y, tf.int64)


def build_model(data: Data):
    import tensorflow as tf
    return tf.keras.Sequential([
        tf.keras.layers.Flatten(input_shape=(28, 28)),  # 784 inputs
        tf.keras.layers.Dense(392, activation="relu"),
        tf.keras.layers.Dense(196, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
