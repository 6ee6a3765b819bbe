"""Learning-rate scaling by the number of processes, with a linear warm-up.

Data-parallel training with N processes multiplies the global batch by N;
the usual remedy (Goyal et al. 2017) scales the rate by N (or sqrt(N)) and
ramps up to it over the first epochs so early steps do not diverge.
"""
from __future__ import annotations

import math


def scaled_rate(base: float, rule: str, processes: int) -> float:
    """The target rate after the spec's scaling rule."""
    factor = {"linear": processes, "sqrt": math.sqrt(processes), "none": 1.0}
    if rule not in factor:
        raise ValueError(f"lr_scaling={rule!r}: use linear, sqrt or none")
    return base * factor[rule]


def rate_at(progress_epochs: float, base: float, target: float, warmup_epochs: float) -> float:
    """Rate after ``progress_epochs`` epochs (fractional): linear ramp base -> target."""
    if warmup_epochs <= 0 or progress_epochs >= warmup_epochs:
        return target
    return base + (target - base) * max(progress_epochs, 0.0) / warmup_epochs
