"""``harness scale --predict``: throughput and efficiency at every size up to the whole partition.

Inputs: one process's step time and the model's gradient bytes (a sweep's N=1, an earlier
1-process run, or ``--step-ms``), the links (measured by the sweep itself, by ``harness probe``,
or the cluster profile's fields, in that order, each named with its source) and the per-step
communication floor (``--comm-floor-ms``, which a sweep measures).  Outputs: a table, a plot and a
CSV, MLflow metrics (step = N), and a recommendation drawn from those numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from harness import files
from harness.errors import UserError
from harness.scaling.comm_model import Layout, Links, Prediction, predict_layout

GOOD, FAIR = 0.75, 0.5  # efficiency worth the GPUs / still worth it: the recommendation's lines
PACKINGS = ("packed", "spread")


@dataclass(frozen=True)
class Basis:
    """What one process does alone: the model's side of the prediction."""
    step_s: float  # one training step of one process
    gradient_bytes: float  # float32 gradients per step; fp16 compression halves them
    batch: int  # samples per step per process
    source: str  # where step_s came from, for the printout


@dataclass(frozen=True)
class Point:
    processes: int
    layout: Layout  # the busiest node's share: 7 over 2 nodes counts as 2 x 4
    packing: str
    fp16: bool
    prediction: Prediction
    batch: int

    @property
    def efficiency(self) -> float:
        return self.prediction.efficiency

    @property
    def samples_per_s(self) -> float:
        return self.processes * self.batch / self.prediction.step_serial_s


def layout_for(n: int, nodes: int, gpus_per_node: int, packing: str) -> Optional[Layout]:
    """Packed fills nodes of g GPUs; spread takes as many nodes as it can.  The busiest node sets
    the pace, so an uneven split counts as ceil(N / nodes) per node.  None when N does not fit."""
    used = math.ceil(n / gpus_per_node) if packing == "packed" else min(n, nodes)
    if used > nodes:
        return None
    return Layout(used, math.ceil(n / used))


def partition_points(basis: Basis, links: Links, nodes: int, gpus_per_node: int,
                     floor_s: float = 0.0) -> list[Point]:
    points = []
    for n in range(1, nodes * gpus_per_node + 1):
        for packing in PACKINGS:
            layout = layout_for(n, nodes, gpus_per_node, packing)
            for fp16 in (False, True):
                nbytes = basis.gradient_bytes / (2 if fp16 else 1)
                p = predict_layout(basis.step_s, nbytes, layout, links, floor_s)
                points.append(Point(n, layout, packing, fp16, p, basis.batch))
    return points


def _pick(points: Iterable[Point], packing: str, fp16: bool) -> dict[int, Point]:
    return {p.processes: p for p in points if p.packing == packing and p.fp16 == fp16}


def shown_sizes(total: int, gpus_per_node: int) -> list[int]:
    """The table's rows: powers of two and whole nodes, up to the partition."""
    sizes = {2 ** k for k in range(total.bit_length())} | set(range(gpus_per_node, total + 1,
                                                                    gpus_per_node))
    return sorted(n for n in sizes | {total} if n <= total)


def table(points: list[Point], gpus_per_node: int) -> str:
    packed, packed16 = _pick(points, "packed", False), _pick(points, "packed", True)
    spread, spread16 = _pick(points, "spread", False), _pick(points, "spread", True)
    lines = [f"{'N':>3} {'packed':>12} {'eff':>5} {'fp16':>5} {'samples/s':>10}   "
             f"{'spread':>12} {'eff':>5} {'fp16':>5}"]
    for n in shown_sizes(max(packed), gpus_per_node):
        a, s = packed[n], spread[n]
        lines.append(f"{n:>3} {str(a.layout):>12} {a.efficiency:>5.0%} "
                     f"{packed16[n].efficiency:>5.0%} {a.samples_per_s:>10.0f}   "
                     f"{str(s.layout):>12} {s.efficiency:>5.0%} {spread16[n].efficiency:>5.0%}")
    return "\n".join(lines)


def recommend(points: list[Point], gpus_per_node: int) -> str:
    """One line a user can act on: how far one node goes, how far the network goes, fp16's worth."""
    packed, packed16 = _pick(points, "packed", False), _pick(points, "packed", True)
    in_node = max((n for n, p in packed.items() if n <= gpus_per_node and p.efficiency >= GOOD),
                  default=1)
    parts = [f"up to {in_node} GPU{'s' if in_node > 1 else ''} in one node: "
             f"~{packed[in_node].efficiency:.0%}"]
    across = [n for n in packed if n > gpus_per_node and n % gpus_per_node == 0]  # whole nodes
    if across:
        fair = max((n for n in across if packed[n].efficiency >= FAIR), default=None)
        fair16 = max((n for n in across if packed16[n].efficiency >= FAIR), default=None)
        if fair:
            every = "all " if fair == max(packed) else ""
            parts.append(f"{every}{fair} over the network: ~{packed[fair].efficiency:.0%}")
        else:
            two = min(across)
            parts.append(f"{two} over the network: ~{packed[two].efficiency:.0%}")
        if fair16 and (fair is None or fair16 > fair):
            parts[-1] += (f" -- turn on fp16_allreduce: {fair16} GPUs at "
                          f"~{packed16[fair16].efficiency:.0%}")
    peak = max(packed, key=lambda n: packed[n].samples_per_s)
    if peak < max(packed):
        parts.append(f"beyond {peak} GPUs the throughput falls")
    spread_in_node = _pick(points, "spread", False)[in_node]
    if in_node > 1 and spread_in_node.layout.nodes > 1:
        parts.append(f"pack them ({in_node} spread over {spread_in_node.layout.nodes} nodes: "
                     f"~{spread_in_node.efficiency:.0%})")
    return "; ".join(parts)


CSV_COLUMNS = ("processes", "packing", "fp16_allreduce", "nodes", "per_node", "step_s",
               "allreduce_s", "efficiency", "samples_per_s")


def write_csv(points: list[Point], path: Path) -> Path:
    return files.write_csv([{
        "processes": p.processes, "packing": p.packing, "fp16_allreduce": p.fp16,
        "nodes": p.layout.nodes, "per_node": p.layout.per_node,
        "step_s": f"{p.prediction.step_serial_s:.6g}", "allreduce_s": f"{p.prediction.allreduce_s:.6g}",
        "efficiency": f"{p.efficiency:.4f}", "samples_per_s": f"{p.samples_per_s:.6g}"}
        for p in points], CSV_COLUMNS, path)


def plot(points: list[Point], path: Path, title: str, measured: Optional[dict] = None) -> Path:
    """Predicted efficiency against N for the four variants, with measured sizes as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tracking.report import save_figure
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for packing, style in zip(PACKINGS, ("-", "--")):
        for fp16, colour in ((False, "C0"), (True, "C1")):
            chosen = _pick(points, packing, fp16)
            ns = sorted(chosen)
            ax.plot(ns, [chosen[n].efficiency for n in ns], style, color=colour,
                    label=f"{packing}{', fp16 allreduce' if fp16 else ''}")
    for n, eff in (measured or {}).items():
        ax.plot([n], [eff], "ko", ms=6, label="measured" if n == min(measured) else None)
    ax.set_ylim(0, 1.05)
    return save_figure(fig, ax, path, "GPUs", "predicted efficiency", title)


def as_metrics(point: Point) -> dict:
    suffix = f"{point.packing}{'_fp16' if point.fp16 else ''}"
    return {f"predict/efficiency_{suffix}": point.efficiency,
            f"predict/samples_per_sec_{suffix}": point.samples_per_s}


def check_basis(step_ms: Optional[float], floor_ms: float) -> None:
    if step_ms is not None and not 0 < step_ms < 1e7:
        raise UserError(f"--step-ms {step_ms}: give one process's step time in milliseconds, > 0")
    if not 0 <= floor_ms < 1e7:
        raise UserError(f"--comm-floor-ms {floor_ms}: use milliseconds >= 0")
