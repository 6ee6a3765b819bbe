"""Checkpoints are atomic, resumable, and refuse to load what they are not."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness.runtime import checkpoint
from harness.errors import UserError

tf = pytest.importorskip("tensorflow")


def _model(width=4):
    model = tf.keras.Sequential([tf.keras.layers.Input(shape=(3,)), tf.keras.layers.Dense(width),
                                 tf.keras.layers.Dense(1)])
    opt = tf.keras.optimizers.legacy.Adam(0.01)
    model.compile(optimizer=opt, loss="mse")
    model.fit(tf.ones((8, 3)), tf.zeros((8, 1)), epochs=1, verbose=0)  # creates the Adam slots
    return model


def _state(model, epoch, run_id="r1"):
    return checkpoint.CheckpointState(epoch=epoch, history=[{"epoch": i, "loss": 1.0 / (i + 1)}
                                                            for i in range(epoch)],
                                      run_id=run_id, signature=checkpoint.model_signature(model))


def test_save_and_restore_roundtrip_with_optimizer_state(tmp_path):
    model = _model()
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 3))
    fresh = _model()
    fresh.optimizer._create_all_weights(fresh.trainable_variables)
    state = checkpoint.restore(tmp_path, fresh, fresh.optimizer)
    assert state.epoch == 3 and state.run_id == "r1" and len(state.history) == 3
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        assert (a == b).all()
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    slots = [v.numpy() for v in fresh.optimizer.variables() if "/m:" in v.name]
    assert slots and any(abs(s).sum() > 0 for s in slots)  # Adam moments came back, not zeros


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 1))
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("epoch-00002"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, model, model.optimizer, _state(model, 2))
    assert checkpoint.read_state(tmp_path).epoch == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no debris


def test_keeps_only_the_latest_two(tmp_path):
    model = _model()
    for epoch in (1, 2, 3, 4):
        checkpoint.save(tmp_path, model, model.optimizer, _state(model, epoch))
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-00003", "epoch-00004"]


def test_corrupt_checkpoint_is_a_clear_error_not_a_restart(tmp_path):
    model = _model()
    folder = checkpoint.save(tmp_path, model, model.optimizer, _state(model, 2))
    for data in folder.glob("weights.data*"):
        data.write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt or incompatible checkpoint"):
        checkpoint.restore(tmp_path, _model(), _model().optimizer)


def test_corrupt_pointer_is_a_clear_error(tmp_path):
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt checkpoint pointer"):
        checkpoint.plan_resume(tmp_path, resume=True)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model = _model(width=4)
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 2))
    other = _model(width=5)
    with pytest.raises(UserError, match="different model"):
        checkpoint.restore(tmp_path, other, other.optimizer)


def test_existing_checkpoint_needs_resume(tmp_path):
    model = _model()
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 2))
    with pytest.raises(UserError, match="pass --resume"):
        checkpoint.plan_resume(tmp_path, resume=False)
    assert checkpoint.plan_resume(tmp_path, resume=True).epoch == 2
    assert checkpoint.plan_resume(tmp_path / "empty", resume=True) is None
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "epoch-00002"


def test_the_best_weights_travel_with_the_checkpoint(tmp_path):
    """Early stopping after a resume restores the same best weights as without the interruption."""
    model = _model()
    best = [w * 0 + i for i, w in enumerate(model.get_weights())]  # recognisable arrays
    state = _state(model, 5)
    state.best_weights = best
    checkpoint.save(tmp_path, model, model.optimizer, state)
    fresh = _model()
    restored = checkpoint.restore(tmp_path, fresh, fresh.optimizer)
    assert len(restored.best_weights) == len(best)
    for a, b in zip(restored.best_weights, best):
        np.testing.assert_array_equal(a, b)
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 6))  # none kept yet: none back
    again = _model()
    assert checkpoint.restore(tmp_path, again, again.optimizer).best_weights is None


class _ArraysEngine:
    """The tf engine's way of storing weights (npz), on this environment's Keras."""
    checkpoint_kind = "arrays"

    @staticmethod
    def optimizer_variables(optimizer):
        return list(optimizer.variables())


def test_the_arrays_kind_roundtrips_weights_and_optimizer_state(tmp_path):
    model = _model()
    checkpoint.save(tmp_path, model, model.optimizer, _state(model, 2), engine=_ArraysEngine)
    folder = tmp_path / "epoch-00002"
    assert (folder / checkpoint.WEIGHTS).is_file() and not list(folder.glob("weights.index"))
    fresh = _model()
    checkpoint.restore(tmp_path, fresh, fresh.optimizer, engine=_ArraysEngine)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        assert (a == b).all()
    for a, b in zip(model.optimizer.variables(), fresh.optimizer.variables()):
        assert (a.numpy() == b.numpy()).all()


def test_a_checkpoint_resumes_only_on_the_engine_that_wrote_it(tmp_path):
    model = _model()
    checkpoint.save(tmp_path / "tf", model, model.optimizer, _state(model, 1), engine=_ArraysEngine)
    checkpoint.save(tmp_path / "hvd", model, model.optimizer, _state(model, 1))
    with pytest.raises(UserError, match="written by the tf engine; resume it with training.engine=tf"):
        checkpoint.restore(tmp_path / "tf", _model(), model.optimizer)
    with pytest.raises(UserError, match="written by the horovod engine"):
        checkpoint.restore(tmp_path / "hvd", _model(), model.optimizer, engine=_ArraysEngine)
