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


def test_wilson_intervals_match_the_published_values():
    assert lm.wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = lm.wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert lm.wilson(10, 10)[1] == 1.0


def _small_search():
    """100 non-lenses scored 0.00..0.99 (half spirals, half ellipticals) and four lenses."""
    negatives = np.linspace(0, 0.99, 100)
    lenses = np.array([0.99, 0.985, 0.5, 0.2])
    labels, scores = _labelled(lenses, negatives)
    info = {"einstein_radius": np.r_[[0.6, 1.1, 1.1, 2.2], np.zeros(100)],
            "seeing_r": np.ones(104), "arc_snr": np.r_[[4, 25, 12, 60], np.zeros(100)],
            "kind": np.array(["lens"] * 4 + ["spiral"] * 50 + ["elliptical"] * 50)}
    return labels, scores, info


def test_completeness_by_bin_at_a_false_positive_rate_by_hand():
    # FPR 1e-2 of 100 non-lenses lets one through: the threshold is the second-highest
    # non-lens, 0.98; the lenses at 0.99 and 0.985 are found, 0.5 and 0.2 are not.
    labels, scores, info = _small_search()
    assert lm.threshold_at(scores[4:], 1e-2) == pytest.approx(0.98)
    rows = {(r["quantity"], r["low"]): r for r in lm.completeness_table(labels, scores, info, 1e-2)}
    assert (rows["einstein_radius", 0.5]["lenses"], rows["einstein_radius", 0.5]["found"]) == (1, 1)
    assert rows["einstein_radius", 1.0]["completeness"] == 0.5
    assert rows["einstein_radius", 2.0]["completeness"] == 0.0
    assert rows["einstein_radius", 2.5]["lenses"] == 0 and np.isnan(rows["einstein_radius", 2.5]["completeness"])
    assert rows["einstein_radius_over_seeing", 0.4]["lenses"] == 0  # 0.6/1.0 falls in [0.6, 0.8)
    assert rows["einstein_radius_over_seeing", 0.6]["found"] == 1
    assert [rows["arc_snr", low]["found"] for low in (3, 10, 20, 50)] == [1, 0, 1, 0]
    r = rows["einstein_radius", 1.0]
    assert (r["completeness_low"], r["completeness_high"]) == lm.wilson(1, 2)


def test_false_positives_by_kind_by_hand():
    labels, scores, info = _small_search()
    rows = {r["kind"]: r for r in lm.false_positive_table(labels, scores, info, 1e-2)}
    assert set(rows) == {"spiral", "elliptical"}  # lenses are not false positives
    assert (rows["elliptical"]["negatives"], rows["elliptical"]["false_positives"]) == (50, 1)
    assert rows["elliptical"]["share_of_false_positives"] == 1.0
    assert rows["spiral"]["false_positives"] == 0 and rows["spiral"]["rate_high"] == pytest.approx(
        lm.wilson(0, 50)[1])


def test_validation_figures_are_auroc_and_tpr10():
    labels, scores = _labelled([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    assert lm.validation_figures(labels, scores) == {"auroc": pytest.approx(8 / 9), "tpr10": 1.0}


def test_the_tables_and_curves_are_written(tmp_path):
    from jobs import lens_figures
    labels, scores, info = _small_search()
    written = lens_figures.write(tmp_path, labels, scores, info, 1e-2)
    assert sorted(p.name for p in written) == ["completeness.csv", "completeness.png",
                                               "false_positives_by_kind.csv", "roc.csv", "roc.png"]
    assert (tmp_path / "completeness.csv").read_text().splitlines()[0].startswith(
        "quantity,low,high,lenses,found,completeness")
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
