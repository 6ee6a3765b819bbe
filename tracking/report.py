"""The loss-curve PNG and the self-contained HTML report a physicist opens in MLflow."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402



def human_epoch(step) -> int:
    """MLflow's step (and the history's "epoch") counts from 0; a person reads from 1."""
    return int(step) + 1


def loss_curve_png(history: Sequence[dict], path: Path, title: str = "",
                   marks: Optional[Mapping] = None) -> Path:
    """Training and validation loss against epoch (from 1), the gap shaded, and from the verdict
    (``marks``: best_epoch, onset_epoch, kind) the best epoch marked and the overfitting or
    plateau stretch shaded."""
    epochs = [human_epoch(h["epoch"]) for h in history]
    loss = [h["loss"] for h in history]
    val = [h.get("val_loss", float("nan")) for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(epochs, loss, "o-", ms=3, label="loss (training)")
    ax.plot(epochs, val, "s-", ms=3, label="val_loss (validation)")
    ax.fill_between(epochs, loss, val, color="tab:red", alpha=0.12, label="generalization gap")
    _mark_verdict(ax, marks or {}, epochs, val)
    return save_figure(fig, ax, path, "epoch", "loss", title or "loss curves")


def _mark_verdict(ax, marks: Mapping, epochs: list, val: list) -> None:
    best, onset, kind = marks.get("best_epoch"), marks.get("onset_epoch"), marks.get("kind")
    if best is not None:
        ax.axvline(best, color="k", ls="--", lw=1)
        ax.annotate(f"best epoch {best}", (best, val[best - 1]), textcoords="offset points",
                    xytext=(6, 10))
    if onset is not None and kind in ("overfitting", "plateau"):
        color = "tab:orange" if kind == "overfitting" else "tab:gray"
        ax.axvspan(onset - 0.5, epochs[-1] + 0.5, color=color, alpha=0.15,
                   label=f"{kind} since epoch {onset}")


def save_figure(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, grid and legend, then write the PNG and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: Sequence[Mapping], keys: Sequence[str], row_class=lambda row: "") -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        f'<tr class="{row_class(r)}">' + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys)
        + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _epoch_class(marks: Mapping):
    """The best epoch's row in bold, the overfitting (or plateau) stretch shaded."""
    def row_class(row) -> str:
        if row.get("epoch") == marks.get("best_epoch"):
            return "best"
        onset = marks.get("onset_epoch")
        return marks.get("kind", "") if onset and row.get("epoch", 0) >= onset else ""
    return row_class


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def html_report(name: str, history: Sequence[dict], final: Mapping, verdict: str,
                png: Path, extra_sections: Sequence[str] = (), marks: Optional[Mapping] = None
                ) -> str:
    """One HTML file with everything inline (MLflow's artifact viewer shows it as is)."""
    image = base64.b64encode(Path(png).read_bytes()).decode()
    keys = ["epoch"] + sorted({k for h in history for k in h} - {"epoch"})
    history = [{**h, "epoch": human_epoch(h["epoch"])} for h in history]
    figures = "".join(f"<li><b>{html.escape(k)}</b>: {_fmt(v)}</li>" for k, v in final.items())
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} tr.best{{font-weight:bold}}
tr.overfitting{{background:#fde7d2}} tr.plateau{{background:#eee}}</style></head><body>
<h1>{html.escape(name)}</h1>
<p><b>Overfitting verdict:</b> {html.escape(verdict)}</p>
<h2>Final figures</h2><ul>{figures}</ul>
<h2>Loss curves</h2><img alt="loss curves" src="data:image/png;base64,{image}">
<h2>Per epoch (throughput in samples/s over all processes)</h2>
{_table(history, keys, _epoch_class(marks or {}))}
{''.join(extra_sections)}
</body></html>"""


def timeline_png(samples: Sequence[tuple], epoch_ends: Sequence[float], path: Path) -> Path:
    """Utilisation, memory and power per GPU against time, epoch ends as dotted lines.

    Without GPUs the panels show the host's CPU and memory instead.
    """
    t0 = samples[0][0]
    keys = sorted({k for _, m in samples for k in m})
    gpu_panels = [("utilization_percentage", "GPU busy (%)"), ("memory_usage_megabytes", "GPU memory (MB)"),
                  ("power_usage_watts", "power (W)")]
    host_panels = [("cpu_utilization_percentage", "CPU busy (%)"),
                   ("system_memory_usage_megabytes", "host memory (MB)")]
    on_gpu = any(re.search(r"/gpu_\d+_", k) for k in keys)
    panels = gpu_panels if on_gpu else host_panels
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels)), dpi=100, sharex=True)
    for ax, (suffix, label) in zip(axes, panels):
        pattern = rf"/gpu_\d+_{suffix}$" if on_gpu else rf"/{suffix}$"
        for key in (k for k in keys if re.search(pattern, k)):
            pts = [(t - t0, m[key]) for t, m in samples if key in m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label=key.split("/", 2)[-1])
        for end in epoch_ends:
            ax.axvline(end - t0, color="grey", ls=":", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("seconds since training started (dotted: epoch ends)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def telemetry_section(lines: Sequence[str], timeline: Path = None) -> str:
    """GPU use, the flags, and the timeline plot."""
    if not lines:
        return "<h2>GPU use</h2><p>telemetry off</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    plot = ""
    if timeline is not None and Path(timeline).is_file():
        data = base64.b64encode(Path(timeline).read_bytes()).decode()
        plot = f'<img alt="telemetry timeline" src="data:image/png;base64,{data}">'
    return f"<h2>GPU use</h2><ul>{items}</ul>{plot}"


def terminal_summary(name: str, history: Sequence[dict], final: Mapping, verdict: str,
                     marks: Optional[Mapping] = None) -> str:
    """The same summary as the HTML report, for `harness report`: epochs from 1, the best one
    and the overfitting (or plateau) stretch marked in the margin."""
    marks = marks or {}
    lines = [f"run {name}", f"verdict: {verdict}"]
    lines += [f"  {k}: {_fmt(v)}" for k, v in final.items()]
    cols = ["loss", "val_loss", "generalization_gap", "throughput/samples_per_sec"]
    lines.append(f"{'epoch':>6}  " + "  ".join(f"{c.split('/')[0]:>18}" for c in cols))
    for h in history:
        epoch = human_epoch(h["epoch"])
        note = ("  <- best" if epoch == marks.get("best_epoch") else
                f"  {marks['kind']}" if marks.get("onset_epoch") and epoch >= marks["onset_epoch"]
                and marks.get("kind") in ("overfitting", "plateau") else "")
        lines.append(f"{epoch:>6}  " + "  ".join(f"{_fmt(h.get(c)):>18}" for c in cols) + note)
    return "\n".join(lines)
