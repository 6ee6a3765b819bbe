"""Figures logged with their intervals (``name``, ``name_low``, ``name_high``), read as one.

Plain Python: the workers' held-out line and ``harness report`` both use it, and neither should
pay for matplotlib to print a line.
"""
from __future__ import annotations

from typing import Mapping


def with_intervals(final: Mapping) -> list:
    """[(name, value, (low, high) or None)]: each figure once, its ``name_low``/``name_high``
    folded in as its interval (the held-out line and ``harness report`` print them so)."""
    folded = {f"{n}_{end}" for n in final for end in ("low", "high")
              if f"{n}_low" in final and f"{n}_high" in final}
    return [(name, value, (final[f"{name}_low"], final[f"{name}_high"])
             if f"{name}_low" in folded else None)
            for name, value in final.items() if name not in folded]
