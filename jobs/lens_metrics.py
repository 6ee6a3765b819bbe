"""The figures strong-lens searches publish, from held-out scores, each with a bootstrap interval.

- **AUROC**: area under the ROC curve (scikit-learn's ``roc_auc_score``).
- **TPR0 / TPR10** (the Strong Gravitational Lens Finding Challenge, Metcalf et al. 2019, A&A
  625, A119): the share of lenses found at the highest score threshold that lets through no
  false positive, or fewer than ten.  A positive tied with the deciding negative is not counted.
  Both depend on how many negatives the test set holds (more negatives, more chances for one
  to score high), so that number is logged beside them (``test_negatives``).
- **TPR at FPR f**: the share found at the threshold that lets through at most ``f`` of the
  negatives; reported only where the test set resolves it (at least ``1/f`` negatives).
- **Completeness** at a fixed false-positive rate (``COMPLETENESS_FPR``), in bins of Einstein
  radius, Einstein radius over seeing and arc signal-to-noise, with Wilson intervals; and the
  **false positives by kind** of non-lens at that threshold (jobs/lens_sky.py's kinds).
- **Intervals**: a stratified bootstrap (lenses and non-lenses resampled apart, so each replica
  has the test set's class counts, on which TPR0 and TPR10 depend), percentile interval.
"""
from __future__ import annotations

import math

import numpy as np

FPR_POINTS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}
COMPLETENESS_FPR = 1e-2
BINS = {  # the quantities completeness is shown against, with their bin edges
    "einstein_radius": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0),
    "einstein_radius_over_seeing": (0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.5),
    "arc_snr": (3, 5, 10, 15, 20, 30, 50, 100, 150),
}
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


def validation_figures(labels: np.ndarray, scores: np.ndarray) -> dict:
    """What a sweep may choose on, each epoch: AUROC and TPR10 of the validation set."""
    figures = point_figures(labels, scores)
    return {"auroc": figures["auroc"], "tpr10": figures["tpr10"]}


def threshold_at(negatives: np.ndarray, rate: float) -> float:
    """The score a lens must beat for at most ``rate`` of the negatives to pass."""
    k = len(negatives) - 1 - math.floor(rate * len(negatives))
    return float(np.partition(negatives, k)[k])


def wilson(found: int, total: int, level: float = INTERVAL) -> tuple[float, float]:
    """Wilson score interval of a binomial share (sound at 0 and 1 found, unlike the normal one)."""
    if total == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm
    z = norm.ppf(1 - (1 - level) / 2)
    p = found / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (0.0 if found == 0 else max(0.0, centre - half),
            1.0 if found == total else min(1.0, centre + half))


def completeness_table(labels, scores, info: dict, rate: float = COMPLETENESS_FPR) -> list[dict]:
    """Rows (quantity, low, high, lenses, found, completeness, low/high of its interval): the
    share of lenses found at the threshold passing ``rate`` of the non-lenses, bin by bin."""
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores).ravel()
    threshold = threshold_at(scores[~labels], rate)
    lens = {name: np.asarray(values)[labels] for name, values in quantities(info).items()}
    found = scores[labels] > threshold
    rows = []
    for name, edges in BINS.items():
        for low, high in zip(edges[:-1], edges[1:]):
            inside = (lens[name] >= low) & (lens[name] < high)
            n, k = int(inside.sum()), int(found[inside].sum())
            ci = wilson(k, n)
            rows.append({"quantity": name, "low": low, "high": high, "lenses": n, "found": k,
                         "completeness": k / n if n else float("nan"),
                         "completeness_low": ci[0], "completeness_high": ci[1]})
    return rows


def quantities(info: dict) -> dict:
    return {"einstein_radius": info["einstein_radius"], "arc_snr": info["arc_snr"],
            "einstein_radius_over_seeing": np.asarray(info["einstein_radius"]) /
            np.asarray(info["seeing_r"])}


def false_positive_table(labels, scores, info: dict, rate: float = COMPLETENESS_FPR) -> list[dict]:
    """Per kind of non-lens: how many, how many pass the threshold, that rate with its interval."""
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores).ravel()
    threshold = threshold_at(scores[~labels], rate)
    kinds = np.asarray(info["kind"])[~labels]
    passed = scores[~labels] > threshold
    rows = []
    for kind in sorted(set(kinds)):
        mine = kinds == kind
        n, k = int(mine.sum()), int(passed[mine].sum())
        ci = wilson(k, n)
        rows.append({"kind": kind, "negatives": n, "false_positives": k,
                     "false_positive_rate": k / n, "rate_low": ci[0], "rate_high": ci[1],
                     "share_of_false_positives": k / max(1, int(passed.sum()))})
    return rows


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
