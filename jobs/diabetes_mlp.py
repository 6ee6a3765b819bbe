"""The lecture's example 1: does a patient have diabetes?  An MLP on the Pima Indians CSV.

Run it on two local processes (after ``make setup``)::

    .venv/bin/harness run jobs/diabetes_mlp.yaml --np 2 --set data.csv=/path/to/pima-indians-diabetes.csv

On the cluster: ``harness submit jobs/diabetes_mlp.yaml``.

The CSV has 768 rows of pregnancies, glucose, diastolic, triceps, insulin,
bmi, dpf, age and the label diabetes (0/1).  As in the lecture, the last 10
rows are held out as a test group and the other 758 are split 80/20 into
training (606) and validation (152).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.spec.jobs import Splits
from harness.spec.schema import FieldError, doc

COLUMNS = ("pregnancies", "glucose", "diastolic", "triceps", "insulin", "bmi", "dpf", "age",
           "diabetes")
LOSS = "binary_crossentropy"
METRICS = ("accuracy",)


@dataclass(frozen=True)
class Data:
    csv: str = field(metadata=doc("the Pima CSV (header row, 9 columns)", file=True))
    test_rows: int = field(default=10, metadata=doc("last rows held out as the test group"))
    val_fraction: float = field(default=0.2, metadata=doc("share of the rest used for validation"))

    def __post_init__(self):
        if not 1 <= self.test_rows <= 100:
            raise FieldError("test_rows", self.test_rows, "use 1..100")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise FieldError("val_fraction", self.val_fraction, "use 0.05..0.5")


def read_csv(path: str) -> np.ndarray:
    from harness.errors import UserError
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float32)
    except (ValueError, OSError) as e:
        raise UserError(f"data.csv={path!r}: cannot read it as CSV ({e})") from None
    missing = [c for c in COLUMNS if c not in (table.dtype.names or ())]
    if missing or len(table) < 50:
        raise UserError(f"data.csv={path!r}: expected a header with {', '.join(COLUMNS)} and at "
                        f"least 50 rows; missing columns: {missing or 'none'}, rows: {len(table)}")
    return np.stack([table[c] for c in COLUMNS], axis=1)


def load_data(data: Data, seed: int) -> Splits:
    rows = read_csv(data.csv)
    if np.isnan(rows).any():
        from harness.errors import UserError
        raise UserError(f"data.csv={data.csv!r}: empty or non-numeric cells; the Pima CSV is all numbers")
    features, labels = rows[:, :-1], rows[:, -1:]
    rest, test = slice(0, -data.test_rows), slice(-data.test_rows, None)
    order = np.random.default_rng(seed).permutation(len(features[rest]))
    n_val = int(round(len(order) * data.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_rest, y_rest = features[rest], labels[rest]
    # Standardise with training statistics only, so validation and test stay unseen.
    mean, std = x_rest[train_idx].mean(0), x_rest[train_idx].std(0) + 1e-6
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return Splits(scale(x_rest[train_idx]), y_rest[train_idx], scale(x_rest[val_idx]),
                  y_rest[val_idx], scale(features[test]), labels[test])


def build_model(data: Data):
    import tensorflow as tf
    return tf.keras.Sequential([
        tf.keras.layers.Input(shape=(8,)),
        tf.keras.layers.Dense(12, activation="relu"),
        tf.keras.layers.Dropout(0.5),  # the lecture's 50% dropout
        tf.keras.layers.Dense(8, activation="relu"),
        tf.keras.layers.Dense(1, activation="sigmoid"),  # one output: probability of diabetes
    ])


def evaluate(model, splits: Splits) -> dict:
    predicted = (model.predict(splits.x_test, verbose=0) > 0.5).astype(np.float32)
    return {"test_accuracy": float((predicted == splits.y_test).mean())}
