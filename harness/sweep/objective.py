"""What a sweep ranks its points by: ``best_val_loss``, lowest first, unless ``--objective
NAME:max|min`` names another metric the runs log (the lens finder's ``val_auroc``, say).

Test figures are never an objective: they are held out to report the chosen point, and a
point chosen on them would report a figure that chose it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from harness.errors import UserError

DEFAULT_METRIC = "best_val_loss"
HELD_OUT_PREFIX = "test_"


@dataclass(frozen=True)
class Objective:
    metric: str = DEFAULT_METRIC
    goal: str = "min"  # or "max"

    def describe(self) -> dict:
        return {"metric": self.metric, "goal": self.goal}

    @classmethod
    def of_record(cls, record: dict) -> "Objective":
        """A points file's objective (files written before --objective rank by val_loss)."""
        return cls(**record.get("objective", {}))

    @property
    def direction(self) -> str:
        return "higher" if self.goal == "max" else "lower"

    def best(self, rows: list) -> Optional[dict]:
        """The finished point with the best finite value, or None."""
        finished = [r for r in rows if r["status"] == "FINISHED" and _finite(r.get(self.metric))]
        if not finished:
            return None
        pick = max if self.goal == "max" else min
        return pick(finished, key=lambda r: r[self.metric])


def parse(text: Optional[str]) -> Objective:
    """``--objective NAME:max|min``; absent: best_val_loss, lowest."""
    if not text:
        return Objective()
    found = re.fullmatch(r"([A-Za-z0-9_./-]+):(max|min)", text)
    if not found:
        raise UserError(f"--objective {text!r}: use NAME:max or NAME:min, a metric the runs "
                        "log, e.g. val_auroc:max or best_val_loss:min")
    if found.group(1).startswith(HELD_OUT_PREFIX):
        raise UserError(f"--objective {text!r}: test figures are held out to report the chosen "
                        "point, never to choose it; rank by a validation figure (val_...)")
    return Objective(found.group(1), found.group(2))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
