"""The scaling sweep's outputs: the table, its CSV, and the two plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.scaling.stats import MIN_WINDOWS, ScaleRow  # noqa: E402
from tracking.report import save_figure  # noqa: E402

COLUMNS = ["processes", "samples_per_s", "ci95_low", "ci95_high", "windows", "per_process",
           "speedup", "efficiency", "efficiency_low", "efficiency_high", "predicted_efficiency",
           "predicted_efficiency_overlap"]


def _maybe(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0%}"


def table(rows: Sequence[ScaleRow]) -> str:
    head = (f"{'N':>3} {'samples/s':>10} {'95% CI':>19} {'per proc':>9} {'speed-up':>9} "
            f"{'efficiency':>10} {'predicted':>9} {'(overlap)':>9}")
    lines = [head]
    for r in rows:
        t = r.throughput
        digits = 0 if t.mean >= 100 else 1  # ResNet-50 on a CPU runs at a few images/s
        ci = (f"{t.low:.{digits}f} .. {t.high:.{digits}f}" if t.meaningful else
              f"({t.windows} window{'s' if t.windows != 1 else ''}: none)")
        lines.append(f"{r.processes:>3} {t.mean:>10.1f} {ci:>19} {r.per_process:>9.1f} "
                     f"{r.speedup:>9.2f} {r.efficiency:>10.0%} {_maybe(r.predicted_efficiency):>9} "
                     f"{_maybe(r.predicted_overlap):>9}")
    few = sorted({r.throughput.windows for r in rows if not r.throughput.meaningful})
    if few:
        lines.append(f"95% intervals need at least {MIN_WINDOWS} timing windows per size; this "
                     f"sweep took {', '.join(map(str, few))} (--repeats {few[0]}): run more repeats "
                     "for an interval worth reading")
    return "\n".join(lines)


def as_dicts(rows: Sequence[ScaleRow]) -> list[dict]:
    return [dict(zip(COLUMNS, [r.processes, r.throughput.mean, r.throughput.low, r.throughput.high,
                               r.throughput.windows, r.per_process, r.speedup, r.efficiency,
                               r.efficiency_low, r.efficiency_high, r.predicted_efficiency,
                               r.predicted_overlap])) for r in rows]


def throughput_png(rows: Sequence[ScaleRow], path: Path, title: str) -> Path:
    """Samples/s against N with 95% intervals and the ideal line N x T(1)."""
    n = [r.processes for r in rows]
    mean = [r.throughput.mean for r in rows]
    err = [[0 if math.isnan(r.throughput.low) else r.throughput.mean - r.throughput.low for r in rows],
           [0 if math.isnan(r.throughput.high) else r.throughput.high - r.throughput.mean
            for r in rows]]  # asymmetric: the interval is a factor either side
    base = rows[0].throughput.mean / rows[0].processes
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(n, [base * k for k in n], "k--", lw=1, label="ideal (linear)")
    ax.errorbar(n, mean, yerr=err, fmt="o-", capsize=4, label="measured (95% CI)")
    ax.set_xticks(n)
    return save_figure(fig, ax, path, "processes (GPUs)", "samples/s", title)


def efficiency_png(rows: Sequence[ScaleRow], path: Path, title: str) -> Path:
    """Measured efficiency against N (error bars: the bounds the two throughput intervals allow),
    with the communication model's prediction."""
    n = [r.processes for r in rows]
    eff = [r.efficiency for r in rows]
    err = [[0 if math.isnan(r.efficiency_low) else r.efficiency - r.efficiency_low for r in rows],
           [0 if math.isnan(r.efficiency_high) else r.efficiency_high - r.efficiency for r in rows]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    ax.errorbar(n, eff, yerr=err, fmt="o-", capsize=4, label="measured (95% bounds)")
    predicted = [(r.processes, r.predicted_efficiency, r.predicted_overlap) for r in rows
                 if r.predicted_efficiency is not None]
    if predicted:
        ax.plot([p[0] for p in predicted], [p[1] for p in predicted], "s:", label="model, no overlap")
        ax.plot([p[0] for p in predicted], [p[2] for p in predicted], "^:", label="model, overlap")
    ax.set_ylim(bottom=0)
    ax.set_xticks(n)
    return save_figure(fig, ax, path, "processes (GPUs)", "efficiency S(N)/N", title)

