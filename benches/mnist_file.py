"""A random file in Keras's mnist.npz format, for benches that must not download anything."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_mnist(path: Path, n_train: int, n_test: int = 2000) -> None:
    rng = np.random.default_rng(0)
    make = lambda n: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),  # noqa: E731
                      rng.integers(0, 10, n, dtype=np.uint8))
    (xt, yt), (xv, yv) = make(n_train), make(n_test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xv, y_test=yv)
