"""The lens finder's held-out tables and curves as files for the run: CSV tables, PNG plots.

Written by the job's ``evaluate`` into the folder the harness gives it; the harness uploads the
folder to the run (artifacts under ``evaluation/``) and ``harness report`` prints the tables.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jobs import lens_metrics

LABELS = {"einstein_radius": "Einstein radius (arcsec)",
          "einstein_radius_over_seeing": "Einstein radius / seeing FWHM (r)",
          "arc_snr": "arc signal-to-noise (r)"}


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                         for r in rows)
    return path


def roc_rows(labels, scores) -> list[dict]:
    from sklearn.metrics import roc_curve
    fpr, tpr, thresholds = roc_curve(np.ravel(labels), np.ravel(scores))
    return [{"false_positive_rate": float(f), "true_positive_rate": float(t), "threshold": float(s)}
            for f, t, s in zip(fpr, tpr, thresholds)]


def roc_png(path: Path, rows: list[dict], negatives: int) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fpr = np.array([r["false_positive_rate"] for r in rows])
    tpr = np.array([r["true_positive_rate"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(np.maximum(fpr, 0.5 / negatives), tpr, where="post")
    ax.axvline(1 / negatives, ls=":", c="grey", label=f"one false positive in {negatives}")
    ax.set(xscale="log", xlim=(0.5 / negatives, 1), ylim=(0, 1), xlabel="false-positive rate",
           ylabel="true-positive rate (completeness)", title="ROC, held-out images")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def completeness_png(path: Path, rows: list[dict], rate: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(LABELS), figsize=(4 * len(LABELS), 3.4), sharey=True)
    for ax, (name, label) in zip(axes, LABELS.items()):
        mine = [r for r in rows if r["quantity"] == name and r["lenses"]]
        centre = [(r["low"] + r["high"]) / 2 for r in mine]
        value = np.array([r["completeness"] for r in mine])
        error = np.clip([value - [r["completeness_low"] for r in mine],
                         [r["completeness_high"] for r in mine] - value], 0, None)  # rounding
        ax.errorbar(centre, value, yerr=error, xerr=[(r["high"] - r["low"]) / 2 for r in mine],
                    fmt="o", ms=4)
        ax.set(xlabel=label, ylim=(0, 1.02))
        if name == "arc_snr":
            ax.set_xscale("log")
    axes[0].set_ylabel(f"completeness at FPR {rate:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(folder: Path, labels, scores, info: dict,
          rate: float = lens_metrics.COMPLETENESS_FPR) -> list[Path]:
    """Completeness and false-positive tables, the ROC as a table and both curves as plots."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    negatives = int((~np.ravel(labels).astype(bool)).sum())
    completeness = lens_metrics.completeness_table(labels, scores, info, rate)
    roc = roc_rows(labels, scores)
    return [write_csv(folder / "completeness.csv", completeness),
            write_csv(folder / "false_positives_by_kind.csv",
                      lens_metrics.false_positive_table(labels, scores, info, rate)),
            write_csv(folder / "roc.csv", roc),
            roc_png(folder / "roc.png", roc, negatives),
            completeness_png(folder / "completeness.png", completeness, rate)]
