"""Atomic checkpoints: model, optimizer state, epoch and history, written by rank 0.

Each checkpoint is a folder ``epoch-NNNNN`` written under a temporary name and
renamed into place, then ``latest.json`` is replaced atomically to point at
it: a crash at any moment leaves the previous checkpoint intact.  The MLflow
run id lives in ``latest.json`` too, so a resumed job continues the same run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from harness.errors import UserError
from harness.files import atomic_write_text

POINTER = "latest.json"
BEST_WEIGHTS = "best-weights.npz"  # the best epoch's weights, in Keras get_weights() order
WEIGHTS, OPTIMIZER = "weights.npz", "optimizer.npz"  # the "arrays" kind (tf engine)
FORMAT = 1


@dataclass
class CheckpointState:
    """What a checkpoint records besides the weights."""

    epoch: int  # epochs completed
    history: list = field(default_factory=list)  # one metrics dict per completed epoch
    run_id: Optional[str] = None
    signature: str = ""  # model layout: shapes of every weight, to refuse a different model
    extra: dict = field(default_factory=dict)
    best_weights: Optional[list] = None  # the best epoch's weights (early stopping restores them)


def model_signature(model) -> str:
    """Shapes of every weight in order (names carry per-process counters, so they are left out)."""
    return ";".join("x".join(map(str, w.shape)) for w in model.weights)


def _tf_checkpoint(model, optimizer):
    import tensorflow as tf
    return tf.train.Checkpoint(model=model, optimizer=optimizer)


def _kind(engine) -> str:
    """How the weights are stored: TensorFlow checkpoint files (Horovod engine), or plain arrays
    (tf engine: a TensorFlow checkpoint of mirrored Keras 3 objects would make every worker
    take part in the write, and rank 0 writes alone)."""
    return getattr(engine, "checkpoint_kind", "tf.train")


def _write_weights(folder: Path, model, optimizer, engine) -> None:
    if _kind(engine) == "arrays":
        np.savez(folder / WEIGHTS, *model.get_weights())
        np.savez(folder / OPTIMIZER, *[np.asarray(v.numpy())
                                       for v in engine.optimizer_variables(optimizer)])
    else:
        _tf_checkpoint(model, optimizer).write(str(folder / "weights"))


def _read_arrays(path: Path) -> list:
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def _read_weights(folder: Path, model, optimizer, engine) -> None:
    if _kind(engine) == "arrays":
        if not (folder / WEIGHTS).exists():
            raise ValueError("written by the horovod engine; resume it with training.engine=horovod")
        model.set_weights(_read_arrays(folder / WEIGHTS))
        variables, values = engine.optimizer_variables(optimizer), _read_arrays(folder / OPTIMIZER)
        if len(variables) != len(values):
            raise ValueError(f"{len(values)} optimizer arrays for {len(variables)} variables "
                             "(another optimizer?)")
        for variable, value in zip(variables, values):
            variable.assign(value)
        return
    if (folder / WEIGHTS).exists():
        raise ValueError("written by the tf engine; resume it with training.engine=tf")
    status = _tf_checkpoint(model, optimizer).read(str(folder / "weights"))
    status.assert_existing_objects_matched()


def save(directory: Path, model, optimizer, state: CheckpointState, keep: int = 2,
         engine=None) -> Path:
    """Write checkpoint for ``state.epoch`` and point ``latest.json`` at it."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"epoch-{state.epoch:05d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-epoch-{state.epoch:05d}-"))
    try:
        _write_weights(tmp, model, optimizer, engine)
        if state.best_weights is not None:  # a resumed run must restore the same best weights
            np.savez(tmp / BEST_WEIGHTS, *state.best_weights)
        meta = {"format": FORMAT, "epoch": state.epoch, "history": state.history,
                "run_id": state.run_id, "signature": state.signature, "extra": state.extra}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = {"format": FORMAT, "checkpoint": final.name, "epoch": state.epoch,
               "run_id": state.run_id}
    atomic_write_text(directory / POINTER, json.dumps(pointer))
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    old = sorted(p for p in directory.glob("epoch-*") if p.is_dir())[:-keep]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


def read_pointer(directory: Path) -> Optional[dict]:
    """The ``latest.json`` content, None when no checkpoint was ever written here."""
    path = directory / POINTER
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text())
        if pointer.get("format") != FORMAT or "checkpoint" not in pointer:
            raise ValueError(f"format {pointer.get('format')!r}")
        return pointer
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: corrupt checkpoint pointer ({e}); restore it or move the "
                        "folder away to start from zero") from None


def read_state(directory: Path) -> Optional[CheckpointState]:
    """The latest checkpoint's metadata (no TensorFlow needed), None if there is none."""
    pointer = read_pointer(directory)
    if pointer is None:
        return None
    meta_path = directory / pointer["checkpoint"] / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"{meta_path}: corrupt checkpoint ({e}); restore it or move "
                        f"{directory} away to start from zero") from None
    return CheckpointState(epoch=meta["epoch"], history=meta.get("history", []),
                           run_id=meta.get("run_id"), signature=meta.get("signature", ""),
                           extra=meta.get("extra", {}))


def restore(directory: Path, model, optimizer, engine=None) -> CheckpointState:
    """Load the latest checkpoint into ``model`` and ``optimizer``; clear errors otherwise."""
    state = read_state(directory)
    if state is None:
        raise UserError(f"{directory}: no checkpoint to resume from")
    folder = directory / read_pointer(directory)["checkpoint"]
    if state.signature and state.signature != model_signature(model):
        raise UserError(f"{folder}: incompatible checkpoint: it holds a different model "
                        "(weight shapes differ); use another checkpoint.dir to start anew")
    try:
        _read_weights(folder, model, optimizer, engine)
    except Exception as e:  # TF raises several unrelated types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder}: corrupt or incompatible checkpoint ({first}); restore it or "
                        "use another checkpoint.dir to start anew") from None
    best = folder / BEST_WEIGHTS
    if best.exists():
        state.best_weights = _read_arrays(best)
    return state


def plan_resume(directory: Path, resume: bool) -> Optional[CheckpointState]:
    """What to start from: the latest checkpoint with --resume, nothing otherwise.

    Without --resume an existing checkpoint is never overwritten silently;
    with --resume and no checkpoint yet (a first SLURM start) training starts at 0.
    """
    state = read_state(directory)
    if state is not None and not resume:
        raise UserError(f"checkpoint.dir={str(directory)!r} holds a checkpoint at epoch {state.epoch}; "
                        "pass --resume to continue it, or set checkpoint.dir elsewhere to start anew")
    return state
