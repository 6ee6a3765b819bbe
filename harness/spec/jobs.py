"""Finding a job's module and what the harness expects of it.

A job is one readable Python file beside its YAML spec.  It provides:

``Data``
    a frozen dataclass for the spec's ``data:`` section (validated like the rest).
``load_data(data, seed) -> Splits``
    the whole data set as NumPy arrays; the harness shards it by rank.
``build_model(data) -> keras.Model``
    the model, not compiled; ``LOSS`` and ``METRICS`` say how it is trained.
``prepare_data(data)`` (optional)
    run once, before the processes start (simulate or download into a cache).
``evaluate(model, splits[, folder]) -> dict`` (optional)
    final figures on held-out data (for example test accuracy, ROC AUC), rank 0 only.  With a
    third parameter it is given a folder for tables and plots, which the run keeps as
    artifacts under ``evaluation/`` (``harness report`` prints its CSV tables).
``validation_figures(labels, scores) -> dict`` (optional)
    figures from the whole validation set's scores, computed after every epoch and logged as
    ``val_<name>`` (the lens finder's ``val_auroc``, ``val_tpr10``): what sweeps choose on.
``preprocess(x, y) -> (x, y)`` (optional)
    TensorFlow ops on one batch streamed from a shard folder (``data.path`` naming a folder
    made by ``harness data pack``), doing what ``load_data`` does to its arrays.

A job that streams a shard folder offers ``stage: str = stage_field()`` in its ``Data`` too:
``data.stage: node-local`` copies each node's shards to its local disk before training
(harness/runtime/staging.py).

Job modules import TensorFlow inside their functions so that validating a
spec stays fast and never needs TensorFlow.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional

import numpy as np

from harness.errors import UserError

REQUIRED = ("Data", "load_data", "build_model", "LOSS")
STAGES = ("none", "node-local")


def stage_field():
    """``data.stage``, the same in every job that streams a shard folder from ``data.path``;
    the loader checks its value."""
    from harness.spec.schema import doc
    return field(default="none", metadata=doc(
        "node-local: copy each node's shards to its local disk ($SLURM_TMPDIR, else $TMPDIR) "
        "before training and remove them at the end; none: read them where they are"))


@dataclass(frozen=True)
class Splits:
    """Training, validation and (optional) held-out test arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    test_info: Optional[dict] = None  # per test sample facts, {column: array}, for evaluate


def job_source(spec) -> Path:
    """The file a spec's job comes from: the ``.py`` path, or the module's file."""
    spec_dir = Path(spec.spec_path).parent
    if spec.job.endswith(".py"):
        return (spec_dir / spec.job).resolve()
    return Path(resolve_job(spec.job, spec_dir).__file__).resolve()


def resolve_job(job: str, spec_dir: Path) -> ModuleType:
    """Import ``job``: a ``.py`` path (relative to the spec's folder) or a dotted module."""
    if job.endswith(".py"):
        path = (spec_dir / job).resolve()
        if not path.is_file():
            raise UserError(f"job={job!r}: no such file {path}; give a .py path relative to the spec "
                            "or a module name such as jobs.diabetes_mlp")
        module_name = f"harness_job_{path.stem}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(job)
        except ImportError as e:
            raise UserError(f"job={job!r}: cannot import it ({e}); give a .py path relative to "
                            "the spec or an importable module") from None
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise UserError(f"job={job!r}: the job module lacks {', '.join(missing)}; "
                        f"a job defines {', '.join(REQUIRED)} (see harness/jobs.py)")
    return module
