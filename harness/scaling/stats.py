"""Scaling arithmetic: throughput with a confidence interval, speed-up, efficiency, layouts.

Pure functions on numbers, so the sweep's table can be checked on made-up timings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30; beyond that the normal 1.96.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


MIN_WINDOWS = 3  # below this a 95% interval is too wide to mean anything (t = 12.7 at 2 windows)


@dataclass(frozen=True)
class Interval:
    """A rate and its 95% interval, found on the log of the rate: the interval is a factor
    either side of the geometric mean, so it can never reach zero or below."""

    mean: float  # geometric mean of the windows' samples/s
    low: float  # nan without an interval (one window)
    high: float
    windows: int

    @property
    def meaningful(self) -> bool:
        return self.windows >= MIN_WINDOWS

    @property
    def factor(self) -> float:
        """high / mean (= mean / low): 1.05 means +-5%."""
        return self.high / self.mean


def mean_ci(values: Sequence[float]) -> Interval:
    """Geometric mean and 95% Student-t interval on log(samples/s) of the timing windows."""
    n = len(values)
    if n == 0:
        raise ValueError("no timing windows")
    if any(v <= 0 for v in values):
        raise ValueError(f"a throughput window is not positive: {sorted(values)[0]}")
    logs = [math.log(v) for v in values]
    centre = sum(logs) / n
    if n == 1:
        return Interval(math.exp(centre), float("nan"), float("nan"), 1)
    sd = math.sqrt(sum((x - centre) ** 2 for x in logs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return Interval(math.exp(centre), math.exp(centre - half), math.exp(centre + half), n)


@dataclass(frozen=True)
class ScaleRow:
    processes: int
    throughput: Interval  # samples/s over all processes
    speedup: float  # S(N) = T(N) / T(1)
    efficiency: float  # E(N) = S(N) / N
    predicted_efficiency: Optional[float] = None  # from the communication model
    predicted_overlap: Optional[float] = None  # the same, assuming communication fully overlaps

    efficiency_low: float = float("nan")  # conservative bounds from the two intervals
    efficiency_high: float = float("nan")

    @property
    def per_process(self) -> float:
        return self.throughput.mean / self.processes


def scale_rows(throughputs: dict[int, Interval], baseline: Optional[Interval] = None
               ) -> list[ScaleRow]:
    """Speed-up and efficiency against the smallest size (normally 1 process), or against
    ``baseline``, one process's rate measured earlier (then the sizes need not include 1)."""
    if not throughputs:
        return []
    base_n = 1 if baseline else min(throughputs)
    first = baseline or throughputs[base_n]
    base = first.mean / base_n  # per-process rate of the baseline
    rows = []
    for n in sorted(throughputs):
        t = throughputs[n]
        speedup = t.mean / base if base > 0 else float("nan")
        # E(N) at its lowest: this size at its low end over the baseline at its high end.
        low = t.low / n / (first.high / base_n) if n != base_n else float("nan")
        high = t.high / n / (first.low / base_n) if n != base_n else float("nan")
        rows.append(ScaleRow(n, t, speedup, speedup / n, efficiency_low=low, efficiency_high=high))
    return rows


def parse_sizes(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]; ValueError with the bad part otherwise."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(part)
        sizes.append(int(part))
    return sorted(set(sizes))


def layout(n: int, gpus_per_node: int, nodes: int, how: str) -> tuple[int, int]:
    """(nodes, processes per node) for N processes: packed fills nodes, spread uses one per node."""
    if how == "spread" and n <= nodes:
        return n, 1
    if how == "spread":
        raise ValueError(f"spread layout: {n} processes need {n} nodes, the partition has {nodes}")
    per_node = min(n, gpus_per_node)
    if n % per_node:
        raise ValueError(f"packed layout: {n} processes do not fill nodes of {gpus_per_node} "
                         "evenly; use sizes that are multiples of the GPUs per node")
    if n // per_node > nodes:
        raise ValueError(f"{n} processes need {n // per_node} nodes, the partition has {nodes}")
    return n // per_node, per_node
