"""The loss-curve PNG and the self-contained HTML report a physicist opens in MLflow."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

from harness import overfitting  # noqa: E402


def loss_curve_png(history: Sequence[dict], path: Path, title: str = "") -> Path:
    """Training and validation loss against epoch, the gap shaded, the best epoch marked."""
    epochs = [h["epoch"] for h in history]
    loss = [h["loss"] for h in history]
    val = [h.get("val_loss", float("nan")) for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(epochs, loss, "o-", label="loss (training)")
    ax.plot(epochs, val, "s-", label="val_loss (validation)")
    ax.fill_between(epochs, loss, val, color="tab:red", alpha=0.15, label="generalization gap")
    best = overfitting.best_epoch(history)
    if best is not None:
        ax.axvline(epochs[best], color="k", ls="--", lw=1)
        ax.annotate(f"best epoch {epochs[best]}", (epochs[best], val[best]),
                    textcoords="offset points", xytext=(6, 10))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: Sequence[Mapping], keys: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def html_report(name: str, history: Sequence[dict], final: Mapping, verdict: str,
                png: Path, extra_sections: Sequence[str] = ()) -> str:
    """One HTML file with everything inline (MLflow's artifact viewer shows it as is)."""
    image = base64.b64encode(Path(png).read_bytes()).decode()
    keys = ["epoch"] + sorted({k for h in history for k in h} - {"epoch"})
    figures = "".join(f"<li><b>{html.escape(k)}</b>: {_fmt(v)}</li>" for k, v in final.items())
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>
<h1>{html.escape(name)}</h1>
<p><b>Overfitting verdict:</b> {html.escape(verdict)}</p>
<h2>Final figures</h2><ul>{figures}</ul>
<h2>Loss curves</h2><img alt="loss curves" src="data:image/png;base64,{image}">
<h2>Per epoch (throughput in samples/s over all processes)</h2>{_table(history, keys)}
{''.join(extra_sections)}
</body></html>"""


def telemetry_section(lines: Sequence[str]) -> str:
    """GPU use and the flags, as the sampler's summary reported them."""
    if not lines:
        return "<h2>GPU use</h2><p>telemetry off</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<h2>GPU use</h2><ul>{items}</ul>"


def terminal_summary(name: str, history: Sequence[dict], final: Mapping, verdict: str) -> str:
    """The same summary as the HTML report, for `harness report`."""
    lines = [f"run {name}", f"verdict: {verdict}"]
    lines += [f"  {k}: {_fmt(v)}" for k, v in final.items()]
    cols = ["epoch", "loss", "val_loss", "generalization_gap", "throughput/samples_per_sec"]
    lines.append("  ".join(f"{c.split('/')[0]:>18}" for c in cols))
    for h in history:
        lines.append("  ".join(f"{_fmt(h.get(c)):>18}" for c in cols))
    return "\n".join(lines)
