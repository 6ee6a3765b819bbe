"""Reading a loss history: best epoch and the overfitting verdict (no TensorFlow)."""
from __future__ import annotations

from typing import Optional, Sequence


def best_epoch(history: Sequence[dict]) -> Optional[int]:
    """Index of the epoch with the lowest val_loss (the first one on ties)."""
    scored = [(h["val_loss"], i) for i, h in enumerate(history) if "val_loss" in h]
    return min(scored)[1] if scored else None


def overfitting_epoch(history: Sequence[dict], patience: int) -> Optional[int]:
    """First epoch K at which val_loss has risen for ``patience`` epochs while loss fell.

    Returns None when that never happened.  Epoch K is the last of the
    ``patience`` rising epochs, the moment the pattern became clear.
    """
    streak = 0
    for i in range(1, len(history)):
        prev, cur = history[i - 1], history[i]
        if cur["val_loss"] > prev["val_loss"] and cur["loss"] < prev["loss"]:
            streak += 1
            if streak >= patience:
                return i
        else:
            streak = 0
    return None


def verdict(history: Sequence[dict], patience: int) -> str:
    """A one-line verdict for the run's tag and report."""
    k = overfitting_epoch(history, patience)
    best = best_epoch(history)
    if k is not None:
        return (f"overfitting detected at epoch {k}: val_loss rose for {patience} epochs while "
                f"loss fell; best epoch {best}")
    if not history:
        return "no epochs"
    return f"no overfitting seen (patience {patience}); best epoch {best}"
