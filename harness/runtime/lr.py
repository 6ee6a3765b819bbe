"""Learning-rate scaling by the number of processes, with a linear warm-up and an optional decay.

Data-parallel training with N processes multiplies the global batch by N;
the usual remedy (Goyal et al. 2017) scales the rate by N (or sqrt(N)) and
ramps up to it over the first epochs so early steps do not diverge.  After the
warm-up the rate holds, or follows a half cosine down to zero at the last epoch
(Loshchilov & Hutter 2017): a short budget of epochs ends nearer a minimum than
at a constant rate.
"""
from __future__ import annotations

import math


def scaled_rate(base: float, rule: str, processes: int) -> float:
    """The target rate after the spec's scaling rule."""
    factor = {"linear": processes, "sqrt": math.sqrt(processes), "none": 1.0}
    if rule not in factor:
        raise ValueError(f"lr_scaling={rule!r}: use linear, sqrt or none")
    return base * factor[rule]


def rate_at(progress_epochs: float, base: float, target: float, warmup_epochs: float,
            decay: str = "none", epochs: float = 0.0) -> float:
    """Rate after ``progress_epochs`` epochs (fractional): linear ramp base -> target, then
    ``target`` held (decay none) or on a half cosine reaching 0 at ``epochs`` (decay cosine)."""
    if warmup_epochs > 0 and progress_epochs < warmup_epochs:
        return base + (target - base) * max(progress_epochs, 0.0) / warmup_epochs
    if decay == "none" or epochs <= warmup_epochs:
        return target
    done = min(1.0, (progress_epochs - max(warmup_epochs, 0.0)) / (epochs - warmup_epochs))
    return target * 0.5 * (1.0 + math.cos(math.pi * done))
