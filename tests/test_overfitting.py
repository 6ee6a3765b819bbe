"""The overfitting verdict and early stopping on curve fixtures: noisy, as validation curves are."""
from __future__ import annotations

import numpy as np
import pytest

from harness.runtime import overfitting

SEEDS = range(40)


def _history(val, loss):
    return [{"epoch": i, "loss": float(l), "val_loss": float(v)} for i, (v, l) in
            enumerate(zip(val, loss))]


def _falling_loss(n, rng):
    t = np.arange(n)
    return 0.6 * np.exp(-t / 40) + 0.1 + rng.normal(0, 0.002, n)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_noisy_u_shaped_val_loss_is_overfitting_dated_within_two_epochs(seed):
    rng = np.random.default_rng(seed)
    n, minimum = 50, 20  # the true best epoch is index 20: epoch 21, overfitting from epoch 22
    t = np.arange(n)
    val = 0.5 + 0.001 * (t - minimum) ** 2 + rng.normal(0, 0.0015, n)  # noise 0.3%
    verdict = overfitting.judge(_history(val, _falling_loss(n, rng)), patience=10)
    assert verdict.kind == "overfitting", verdict.text()
    assert abs(verdict.onset_epoch - (minimum + 2)) <= 2, verdict.text()
    assert verdict.gl_percent > 2 and verdict.loss_change_percent < 0
    assert verdict.text().startswith(f"overfitting since epoch {verdict.onset_epoch}: val_loss ")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_noisy_curve_that_still_improves_is_not_flagged(seed):
    rng = np.random.default_rng(seed)
    n = 40
    val = 0.5 + 0.5 * np.exp(-np.arange(n) / 15) + rng.normal(0, 0.003, n)
    verdict = overfitting.judge(_history(val, _falling_loss(n, rng)), patience=10)
    assert verdict.kind != "overfitting", verdict.text()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_plateau_is_reported_as_one(seed):
    rng = np.random.default_rng(seed)
    n = 50
    t = np.arange(n)
    val = np.where(t < 10, 0.9 - 0.04 * t, 0.5) + rng.normal(0, 0.002, n)
    verdict = overfitting.judge(_history(val, _falling_loss(n, rng)), patience=10)
    assert verdict.kind == "plateau", verdict.text()
    assert verdict.text().startswith(f"plateau since epoch {verdict.onset_epoch}")


# val_loss of the 2-core lens finder (cosine rate decay, 20 epochs): it falls by about 0.005 an
# epoch, less than its epoch-to-epoch noise, and it is lowest at the last epoch.
LENS_VAL = [0.6202, 0.5497, 0.5133, 0.4916, 0.4502, 0.4187, 0.4134, 0.3879, 0.3720, 0.3669,
            0.3495, 0.3682, 0.3460, 0.3426, 0.3301, 0.3355, 0.3248, 0.3221, 0.3198, 0.3197]
LENS_LOSS = [0.6551, 0.6070, 0.5424, 0.5097, 0.4739, 0.4531, 0.4307, 0.4141, 0.3976, 0.3816,
             0.3761, 0.3522, 0.3451, 0.3359, 0.3254, 0.3156, 0.3089, 0.3051, 0.3016, 0.2994]


def test_a_slow_steady_decline_below_the_noise_is_still_improving():
    verdict = overfitting.judge(_history(LENS_VAL, LENS_LOSS), patience=5)
    assert verdict.kind == "improving", verdict.text()
    assert verdict.best_epoch == 20


# The same tier with the cropped CNN, 30 epochs: val_loss falls 0.332 -> 0.283 from epoch 11 to
# 29 by steps smaller than twice its noise, then is flat for the last ten epochs of the cosine.
LENS_VAL_30 = [0.6274, 0.5225, 0.4813, 0.4205, 0.4152, 0.3808, 0.4290, 0.3572, 0.3500, 0.3366,
               0.3324, 0.3263, 0.3319, 0.3158, 0.3129, 0.3044, 0.3060, 0.3007, 0.3070, 0.2923,
               0.2889, 0.2847, 0.2879, 0.2891, 0.2844, 0.2832, 0.2849, 0.2832, 0.2830, 0.2830]


def test_a_plateau_is_dated_from_where_the_curve_stopped_falling_not_from_its_last_big_step():
    loss = list(np.linspace(0.65, 0.21, len(LENS_VAL_30)))
    verdict = overfitting.judge(_history(LENS_VAL_30, loss), patience=5)
    assert verdict.kind == "plateau", verdict.text()
    assert verdict.onset_epoch >= 20, verdict.text()  # it fell 0.05 after epoch 11


@pytest.mark.parametrize("seed", SEEDS)
def test_a_noisy_linear_decline_is_not_a_plateau(seed):
    rng = np.random.default_rng(seed)
    n = 40
    val = 0.6 - 0.002 * np.arange(n) + rng.normal(0, 0.004, n)  # a step half the noise
    verdict = overfitting.judge(_history(val, _falling_loss(n, rng)), patience=10)
    assert verdict.kind == "improving", verdict.text()


def test_early_stopping_is_keras_rule_with_min_delta():
    val = [1.0, 0.8, 0.7, 0.69, 0.695, 0.70, 0.71]
    history = _history(val, [1.0] * len(val))
    assert overfitting.best_epoch(history) == 3
    assert overfitting.best_epoch(history, min_delta=0.02) == 2  # 0.69 is not better by > 0.02
    assert not overfitting.should_stop(history, patience=4)  # epoch index 3 was the best
    assert overfitting.should_stop(history, patience=4, min_delta=0.02)  # 4 epochs since index 2
    assert overfitting.should_stop(history, patience=3)


def test_prechelt_figures():
    history = _history([1.0, 0.5, 0.55, 0.6], [1.0, 0.9, 0.8, 0.7])
    assert overfitting.generalization_loss(history, 3) == pytest.approx(20.0)
    assert overfitting.training_progress(history, 3, k=2) == pytest.approx(1000 * (1.5 / 1.4 - 1))
    assert overfitting.progress_quotient(history, 3, k=2) == pytest.approx(
        20.0 / (1000 * (1.5 / 1.4 - 1)))
    rising = _history([1.0, 0.9, 0.95, 1.0, 1.1, 1.2, 1.3], [1.0] * 7)
    assert overfitting.up_epoch(rising, successive=2, k=2) == 5  # strip ends 1,3,5: up at 3 and 5
