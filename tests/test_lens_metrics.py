"""The lens-search figures (jobs/lens_metrics.py) against cases worked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from jobs import lens_metrics as lm


def _labelled(positives, negatives):
    return (np.r_[np.ones(len(positives)), np.zeros(len(negatives))],
            np.r_[positives, negatives].astype(float))


def test_auroc_tpr0_and_a_false_positive_allowed_by_hand():
    # Pairs: 0.9 and 0.8 beat all three negatives, 0.3 beats two: AUROC 8/9.  The highest
    # negative (0.7) lets 0.9 and 0.8 through: TPR0 2/3; allowing one false positive moves the
    # threshold to 0.2, above which every lens lies.
    labels, scores = _labelled([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    figures = lm.point_figures(labels, scores)
    assert figures["auroc"] == pytest.approx(8 / 9)
    assert figures["tpr0"] == pytest.approx(2 / 3)
    assert lm.tpr_allowing(scores[:3], scores[3:], 1) == 1.0
    assert figures["tpr10"] == 1.0  # fewer than ten negatives: ten false positives pass them all


def test_a_lens_tied_with_the_deciding_negative_is_not_found():
    labels, scores = _labelled([0.7, 0.9], [0.7, 0.1])
    assert lm.point_figures(labels, scores)["tpr0"] == 0.5


def test_tpr10_is_the_rate_before_the_tenth_false_positive():
    # Twenty negatives at 0.00..0.19 plus 0.50..0.95 for the top ten; the tenth highest is 0.50,
    # so nine false positives pass (above 0.5) and the tenth would not.
    negatives = np.r_[np.arange(20) / 100, np.linspace(0.50, 0.95, 10)]
    positives = np.array([0.99, 0.96, 0.6, 0.55, 0.5, 0.3])  # 0.5 ties the tenth: not counted
    labels, scores = _labelled(positives, negatives)
    figures = lm.point_figures(labels, scores)
    assert figures["tpr0"] == pytest.approx(2 / 6)  # above 0.95
    assert figures["tpr10"] == pytest.approx(4 / 6)  # above 0.50


def test_a_false_positive_rate_the_test_set_cannot_resolve_is_not_reported():
    rng = np.random.default_rng(1)
    few = lm.point_figures(*_labelled(rng.random(50), rng.random(999)))
    assert "tpr_at_fpr_1e-3" not in few and "tpr_at_fpr_1e-4" not in few
    enough = lm.point_figures(*_labelled(rng.random(50), rng.random(2000)))
    assert "tpr_at_fpr_1e-3" in enough and "tpr_at_fpr_1e-4" not in enough
    # At 1e-3 of 2000 negatives, two false positives are allowed: the third-highest decides.
    positives, negatives = np.array([0.9995, 0.9990, 0.5]), np.r_[np.full(1997, 0.1), 0.9999, 0.9998, 0.9991]
    assert lm.point_figures(*_labelled(positives, negatives))["tpr_at_fpr_1e-3"] == pytest.approx(1 / 3)


def test_a_one_class_test_set_is_refused():
    with pytest.raises(ValueError, match="needs both classes: 0 lenses, 3 non-lenses"):
        lm.point_figures(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images():
    rng = np.random.default_rng(7)

    def interval_width(n):
        labels, scores = _labelled(rng.normal(1.5, 1, n), rng.normal(0, 1, n))
        metrics = lm.held_out_metrics(labels, scores, replicas=300)
        assert metrics["test_auroc_low"] <= metrics["test_auroc"] <= metrics["test_auroc_high"]
        assert metrics["test_positives"] == metrics["test_negatives"] == n
        return metrics["test_auroc_high"] - metrics["test_auroc_low"]
    assert interval_width(2000) < 0.6 * interval_width(200)


def test_the_bootstrap_is_reproducible_and_keeps_the_class_counts():
    labels, scores = _labelled(np.linspace(0.4, 1, 30), np.linspace(0, 0.6, 300))
    first = lm.bootstrap_intervals(labels, scores, replicas=200, seed=3)
    assert first == lm.bootstrap_intervals(labels, scores, replicas=200, seed=3)
    # In every replica TPR0 <= TPR10 (one false positive allowed is fewer than ten): so are the bounds.
    assert first["tpr0"][0] <= first["tpr0"][1] <= first["tpr10"][1]
