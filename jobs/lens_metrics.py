"""The figures strong-lens searches publish, from held-out scores, each with a bootstrap interval.

- **AUROC**: area under the ROC curve (scikit-learn's ``roc_auc_score``).
- **TPR0 / TPR10** (the Strong Gravitational Lens Finding Challenge, Metcalf et al. 2019, A&A
  625, A119): the share of lenses found at the highest score threshold that lets through no
  false positive, or fewer than ten.  A positive tied with the deciding negative is not counted.
  Both depend on how many negatives the test set holds (more negatives, more chances for one
  to score high), so that number is logged beside them (``test_negatives``).
- **TPR at FPR f**: the share found at the threshold that lets through at most ``f`` of the
  negatives; reported only where the test set resolves it (at least ``1/f`` negatives).
- **Intervals**: a stratified bootstrap (lenses and non-lenses resampled apart, so each replica
  has the test set's class counts, on which TPR0 and TPR10 depend), percentile interval.
"""
from __future__ import annotations

import math

import numpy as np

FPR_POINTS = {"1e-3": 1e-3, "1e-4": 1e-4}
BOOTSTRAP_REPLICAS = 1000
INTERVAL = 0.95


def tpr_allowing(positives: np.ndarray, negatives: np.ndarray, false_positives: int) -> float:
    """True-positive rate at the highest threshold that lets through at most ``false_positives``
    negatives: positives scored strictly above the (false_positives + 1)-th highest negative."""
    if false_positives >= len(negatives):
        return 1.0
    # The (k+1)-th highest negative: partition instead of a full sort (test sets of 10^5 and more).
    k = len(negatives) - 1 - false_positives
    threshold = np.partition(negatives, k)[k]
    return float(np.mean(positives > threshold))


def point_figures(labels: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC, TPR0, TPR10 and TPR at the resolved false-positive rates, from one test set."""
    from sklearn.metrics import roc_auc_score
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores).ravel()
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError(f"the test set needs both classes: {len(positives)} lenses, "
                         f"{len(negatives)} non-lenses")
    figures = {"auroc": float(roc_auc_score(labels, scores)),
               "tpr0": tpr_allowing(positives, negatives, 0),
               "tpr10": tpr_allowing(positives, negatives, 9)}
    for name, rate in FPR_POINTS.items():
        if resolves(len(negatives), rate):
            figures[f"tpr_at_fpr_{name}"] = tpr_allowing(positives, negatives,
                                                         math.floor(rate * len(negatives)))
    return figures


def resolves(negatives: int, rate: float) -> bool:
    """A false-positive rate ``rate`` means something only if one false positive is within it."""
    return negatives * rate >= 1


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, replicas: int = BOOTSTRAP_REPLICAS,
                        seed: int = 0, level: float = INTERVAL) -> dict:
    """{figure: (low, high)}: the percentile interval of each figure over stratified replicas."""
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores).ravel()
    positives, negatives = scores[labels], scores[~labels]
    rng = np.random.default_rng(seed)
    draws: dict[str, list] = {}
    for _ in range(replicas):
        pos = rng.choice(positives, len(positives))
        neg = rng.choice(negatives, len(negatives))
        replica = point_figures(np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)],
                                np.r_[pos, neg])
        for name, value in replica.items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {name: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
            for name, values in draws.items()}


def held_out_metrics(labels: np.ndarray, scores: np.ndarray, prefix: str = "test_",
                 replicas: int = BOOTSTRAP_REPLICAS) -> dict:
    """The run's metrics: each figure, its interval (``_low``/``_high``) and the class counts."""
    labels = np.asarray(labels).ravel().astype(bool)
    figures = point_figures(labels, scores)
    intervals = bootstrap_intervals(labels, scores, replicas)
    out = {"positives": int(labels.sum()), "negatives": int((~labels).sum())}
    for name, value in figures.items():
        low, high = intervals[name]
        out.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return {f"{prefix}{name}": value for name, value in out.items()}
