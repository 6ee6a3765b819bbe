"""A sweep's results as files: the table (CSV, HTML), every point's validation curve in one
figure, and the objective against each varied parameter.  Pure rendering: the rows come in."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from tracking.report import _fmt, plt, save_figure

OBJECTIVE = "best_val_loss"


def curves_png(curves: Mapping[str, Sequence[tuple]], failed: set, path: Path, title: str,
               best: Optional[str] = None) -> Path:
    """val_loss against epoch, one line per point; failed points dashed, the best one thick."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    values = [v for points in curves.values() for _, v in points if math.isfinite(v)]
    for name, points in curves.items():
        if not points:
            continue
        epochs, losses = zip(*points)
        ax.plot(epochs, losses, marker="o", ms=3, lw=2.5 if name == best else 1.2,
                ls="--" if name in failed else "-",
                label=f"{name}{' (best)' if name == best else ''}{' (failed)' if name in failed else ''}")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")  # one diverged point must not flatten the others
    if not values:
        ax.text(0.5, 0.5, "no point has finished an epoch yet", ha="center", transform=ax.transAxes)
    return save_figure(fig, ax, path, "epoch", "val_loss", title)


def objective_png(key: str, rows: Sequence[Mapping], path: Path, title: str, log_x: bool,
                  best_index: Optional[int] = None, objective=None) -> Path:
    """The objective (``objective.metric``; best_val_loss by default) of each finished point
    against one varied value (text values as categories)."""
    metric = objective.metric if objective is not None else OBJECTIVE
    better = objective.direction if objective is not None else "lower"
    done = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r[key] for r in done]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if not numeric:
        labels = sorted({str(x) for x in xs})
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        xs = [labels.index(str(x)) for x in xs]
    elif log_x and xs and min(xs) > 0:
        ax.set_xscale("log")
    ys = [r[metric] for r in done]
    ax.scatter(xs, ys, s=40, label="points")
    for x, y, r in zip(xs, ys, done):
        if r["point"] == best_index:
            ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", lw=2, label="best")
    if not done:
        ax.text(0.5, 0.5, "no finished point yet", ha="center", transform=ax.transAxes)
    return save_figure(fig, ax, path, key, f"{metric} ({better} is better)", title)


def html_page(title: str, lines: Sequence[str], rows: Sequence[Mapping], columns: Sequence[str],
              images: Sequence[Path], best_index: Optional[int],
              links: Mapping[str, str] = {}) -> str:
    """The table with the best row bold and failed rows shaded, the figures inline; ``links``
    (run id -> UI link, the sweep's parent under "parent") make each point's name a link."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(row, column):
        text, link = _fmt(row.get(column)), links.get(row.get("run_id", ""))
        return f'<a href="{html.escape(link)}">{text}</a>' if column == "name" and link else text
    body = "".join(
        f'<tr class="{"best" if r.get("point") == best_index else r.get("status", "").lower()}">'
        + "".join(f"<td>{cell(r, c)}</td>" for c in columns) + "</tr>" for r in rows)
    figures = "".join(
        f'<p><img alt="{html.escape(p.name)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"></p>' for p in images)
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    if "parent" in links:
        notes += f'<li><a href="{html.escape(links["parent"])}">the sweep in MLflow</a></li>'
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} tr.best{{font-weight:bold}}
tr.failed,tr.killed{{background:#fde7d2}} tr.running,tr.scheduled,tr.pending{{color:#777}}</style>
</head><body><h1>{html.escape(title)}</h1><ul>{notes}</ul>
<table><tr>{head}</tr>{body}</table>{figures}</body></html>"""
