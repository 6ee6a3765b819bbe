"""Strong-lens finder: a CNN that tells gravitational lenses from ordinary galaxies.

The physics job of the lecture (strong-lens search with CNNs) and ``make demo``::

    .venv/bin/harness run jobs/lensfinder_cnn.yaml --np 2

Images are DES-like g, r, i cut-outs simulated with lenstronomy (see
jobs/lens_simulation.py): simulated once before training, cached, reused; or, with
``data.path``, a shard folder streamed (``harness data pack jobs/lensfinder_cnn.yaml DIR`` packs
the simulated, normalised images; a survey's cut-outs pack from FITS or HDF5 the same way).
Reports validation accuracy during training and, at the end, accuracy and ROC
AUC on held-out images never used for training or model selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.spec.jobs import Splits, stage_field
from harness.spec.schema import FieldError, doc
from jobs import lens_metrics, lens_simulation

LOSS = "binary_crossentropy"
METRICS = ("accuracy",)


@dataclass(frozen=True)
class Data:
    n_images: int = field(default=6000, metadata=doc("images to simulate, half of them lenses"))
    num_pix: int = field(default=48, metadata=doc("cut-out size in pixels (0.263 arcsec each)"))
    val_fraction: float = field(default=0.2, metadata=doc("share used for validation"))
    test_fraction: float = field(default=0.1, metadata=doc(
        "share held out for the final figures (AUROC, TPR0, TPR10)"))
    sim_seed: int = field(default=2026, metadata=doc("seed of the simulation (the cache key)"))
    cache_dir: str = field(default=".cache/lensfinder", metadata=doc("where the set is cached"))
    path: str = field(default="", metadata=doc(
        "a shard folder to stream instead of simulating (harness data pack "
        "jobs/lensfinder_cnn.yaml DIR packs this job's images, normalised); empty: simulate",
        file=True))
    stage: str = stage_field()

    def __post_init__(self):
        if not 200 <= self.n_images <= 1_000_000:
            raise FieldError("n_images", self.n_images, "use 200..1000000")
        if not 24 <= self.num_pix <= 128:
            raise FieldError("num_pix", self.num_pix, "use 24..128 pixels (the ring must fit)")
        for name in ("val_fraction", "test_fraction"):
            if not 0.05 <= getattr(self, name) <= 0.4:
                raise FieldError(name, getattr(self, name), "use 0.05..0.4")


def prepare_data(data: Data) -> None:
    if data.path:  # a shard folder: streamed, nothing to simulate
        return
    lens_simulation.load_or_simulate(data.cache_dir, data.n_images, data.num_pix, data.sim_seed)


def normalise(images: np.ndarray) -> np.ndarray:
    """asinh stretch per image, scaled by its r-band brightness: the usual display of survey cut-outs."""
    scale = np.percentile(images[..., 1], 99, axis=(1, 2), keepdims=True)[..., None] + 1e-6
    return np.arcsinh(5.0 * images / scale).astype(np.float32)


def load_data(data: Data, seed: int) -> Splits:
    images, labels = lens_simulation.load_or_simulate(
        data.cache_dir, data.n_images, data.num_pix, data.sim_seed)
    images = normalise(images)
    n_test = int(len(images) * data.test_fraction)
    n_val = int(len(images) * data.val_fraction)
    # The set is already shuffled by the simulation; the split is fixed by sim_seed, not the training seed.
    test, val, train = (slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, None))
    return Splits(images[train], labels[train], images[val], labels[val], images[test], labels[test])


def build_model(data: Data):
    import tensorflow as tf
    layers = tf.keras.layers
    return tf.keras.Sequential([
        layers.Input(shape=(data.num_pix, data.num_pix, len(lens_simulation.BANDS))),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(1, activation="sigmoid"),  # probability that the image holds a lens
    ])


def evaluate(model, splits: Splits) -> dict:
    """The figures lens searches publish (jobs/lens_metrics.py), with bootstrap intervals."""
    scores = model.predict(splits.x_test, batch_size=512, verbose=0)
    accuracy = float(((scores > 0.5) == splits.y_test.astype(bool)).mean())
    return {"test_accuracy": accuracy, **lens_metrics.held_out_metrics(splits.y_test, scores)}
