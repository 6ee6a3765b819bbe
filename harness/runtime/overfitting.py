"""Reading a loss history: the best epoch, early stopping, and a graded, dated overfitting verdict.

Pure arithmetic on the per-epoch history (no TensorFlow), tested on curve fixtures.  The criteria
are Prechelt's ("Early stopping -- but when?", 1998), with E_va the validation loss, E_tr the
training loss and E_opt(t) the lowest validation loss up to epoch t:

- generalization loss  GL(t) = 100 (E_va(t) / E_opt(t) - 1): how far val_loss is above its best;
- training progress    P_k(t) = 1000 (sum of E_tr over the strip of k epochs ending at t /
                                       (k x the strip's minimum) - 1): whether loss still falls;
- progress quotient    PQ(t) = GL(t) / P_k(t): overfitting outpacing what training still gains;
- UP_s: val_loss rose at the end of s successive strips of k epochs.

Early stopping follows Keras' EarlyStopping: stop once val_loss has not improved by more than
``min_delta`` for ``patience`` epochs since the best, and restore the best weights.  Epochs in the
history are indices from 0; everything written for a person counts from 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

STRIP = 5  # Prechelt's strip length k


def best_epoch(history: Sequence[dict], min_delta: float = 0.0) -> Optional[int]:
    """Index of the best val_loss: an epoch counts as better only by more than ``min_delta``."""
    best, best_value = None, float("inf")
    for i, h in enumerate(history):
        if "val_loss" in h and h["val_loss"] < best_value - (min_delta if best is not None else 0):
            best, best_value = i, h["val_loss"]
    return best


def should_stop(history: Sequence[dict], patience: int, min_delta: float = 0.0) -> bool:
    """Keras' rule: ``patience`` epochs since the last improvement by more than ``min_delta``."""
    best = best_epoch(history, min_delta)
    return best is not None and len(history) - 1 - best >= patience


def generalization_loss(history: Sequence[dict], t: int) -> float:
    """GL(t) in percent."""
    e_opt = min(h["val_loss"] for h in history[: t + 1])
    return 100.0 * (history[t]["val_loss"] / e_opt - 1.0) if e_opt > 0 else 0.0


def training_progress(history: Sequence[dict], t: int, k: int = STRIP) -> Optional[float]:
    """P_k(t) in per mille; None before the first full strip."""
    if t + 1 < k:
        return None
    strip = [h["loss"] for h in history[t - k + 1: t + 1]]
    low = min(strip)
    return 1000.0 * (sum(strip) / (k * low) - 1.0) if low > 0 else None


def progress_quotient(history: Sequence[dict], t: int, k: int = STRIP) -> Optional[float]:
    progress = training_progress(history, t, k)
    return generalization_loss(history, t) / progress if progress else None


def up_epoch(history: Sequence[dict], successive: int = 3, k: int = STRIP) -> Optional[int]:
    """First epoch at which UP_s fires: val_loss higher at the end of s successive strips."""
    ends = list(range(k - 1, len(history), k))
    rises = 0
    for previous, end in zip(ends, ends[1:]):
        rises = rises + 1 if history[end]["val_loss"] > history[previous]["val_loss"] else 0
        if rises >= successive:
            return end
    return None


def noise_level(history: Sequence[dict]) -> float:
    """The validation curve's epoch-to-epoch noise (one standard deviation), robustly.

    From second differences, which remove a trend that changes slowly: for white noise of
    deviation s they have deviation s x sqrt(6); the median absolute value x 1.4826 estimates it.
    """
    val = [h["val_loss"] for h in history if "val_loss" in h]
    second = [abs(a - 2 * b + c) for a, b, c in zip(val, val[1:], val[2:])]
    if not second:
        return 0.0
    second.sort()
    return 1.4826 * second[len(second) // 2] / 6 ** 0.5


def last_real_improvement(history: Sequence[dict]) -> Optional[int]:
    """The epoch before the plateau: the last one after which val_loss, however long one waits,
    never gets more than twice the noise below the best it had reached by then.

    Judged against the best reached before, not the last epoch's value: a curve that falls a
    little less than the noise each epoch still improves beyond the noise over many (a run
    whose val_loss fell from 0.332 to 0.283 over 18 such epochs was called a plateau from the
    first of them)."""
    val = [h["val_loss"] for h in history]
    if not val:
        return None
    tolerance = 2 * noise_level(history)
    later_best = val[:]
    for i in range(len(val) - 2, -1, -1):
        later_best[i] = min(val[i], later_best[i + 1])
    best_so_far = val[0]
    for p in range(1, len(val)):
        if later_best[p] >= best_so_far - tolerance:
            return p - 1
        best_so_far = min(best_so_far, val[p])
    return len(val) - 1


def still_falling(history: Sequence[dict], window: int) -> bool:
    """Whether val_loss's mean over the last ``window`` epochs is below its mean over the
    ``window`` before by more than three standard errors of that difference.

    A curve that falls slower per epoch than its noise never beats its lowest value by twice
    the noise in one step, so ``last_real_improvement`` alone would call it a plateau; its
    gains show when epochs are averaged."""
    val = [h["val_loss"] for h in history if "val_loss" in h]
    recent, earlier = val[-window:], val[-2 * window:-window]
    if not earlier:
        return False
    error = noise_level(history) * (1 / len(recent) + 1 / len(earlier)) ** 0.5
    return sum(earlier) / len(earlier) - sum(recent) / len(recent) > 3 * error


@dataclass(frozen=True)
class Verdict:
    """What the history says; epochs count from 1 here, as a person reads them."""

    kind: str  # "overfitting", "plateau", "improving" or "no validation"
    best_epoch: Optional[int] = None
    onset_epoch: Optional[int] = None  # first epoch after the best, for overfitting and plateaus
    epochs_since_best: int = 0
    gl_percent: float = 0.0  # GL at the last epoch
    loss_change_percent: float = 0.0  # training loss, last epoch against the best epoch
    pq: Optional[float] = None  # PQ at the last epoch
    up_epoch: Optional[int] = None

    def text(self) -> str:
        if self.kind == "no validation":
            return "no verdict: no val_loss recorded"
        fell = (f"loss fell {-self.loss_change_percent:.0f}%" if self.loss_change_percent < 0
                else f"loss changed {self.loss_change_percent:+.0f}%")
        if self.kind == "overfitting":
            return (f"overfitting since epoch {self.onset_epoch}: val_loss {self.gl_percent:.1f}% "
                    f"above its best (GL {self.gl_percent:.1f}) while {fell}; "
                    f"best epoch {self.best_epoch}")
        if self.kind == "plateau":
            return (f"plateau since epoch {self.onset_epoch}: val_loss has not improved beyond "
                    f"its noise for {self.epochs_since_best} epochs and stays within "
                    f"{self.gl_percent:.1f}% of its "
                    f"best while {fell}; best epoch {self.best_epoch}")
        return (f"no overfitting seen: val_loss still improving (best epoch {self.best_epoch}, "
                f"{self.epochs_since_best} epoch(s) ago)")

    def metrics(self) -> dict:
        """The figures as MLflow metrics (epochs from 1)."""
        figures = {"overfitting/epochs_since_best": self.epochs_since_best,
                   "overfitting/gl_percent": self.gl_percent,
                   "overfitting/loss_change_percent": self.loss_change_percent,
                   "overfitting/detected": float(self.kind == "overfitting")}
        for key, value in (("overfitting/onset_epoch", self.onset_epoch),
                           ("overfitting/pq", self.pq), ("overfitting/up_epoch", self.up_epoch)):
            if value is not None:
                figures[key] = value
        return figures


def judge(history: Sequence[dict], patience: int, min_delta: float = 0.0,
          gl_threshold: float = 2.0) -> Verdict:
    """Overfitting: val_loss has not improved for ``patience`` epochs and ends more than
    ``gl_threshold`` percent above its best (GL) while the training loss fell; it began the epoch
    after the best.  Plateau: no improvement larger than the curve's own noise for ``patience``
    epochs, within the threshold, and the last ``patience`` epochs no lower on average than the
    ones before.  Otherwise: still improving."""
    if not history or "val_loss" not in history[-1]:
        return Verdict("no validation")
    best = best_epoch(history, min_delta)
    last = len(history) - 1
    since = last - best
    gl = generalization_loss(history, last)
    base = history[best]["loss"]
    change = 100.0 * (history[last]["loss"] / base - 1.0) if base > 0 else 0.0
    pq = progress_quotient(history, last)
    up = up_epoch(history)
    figures = dict(best_epoch=best + 1, epochs_since_best=since, gl_percent=gl,
                   loss_change_percent=change, pq=pq, up_epoch=None if up is None else up + 1)
    if since >= patience and gl > gl_threshold and change < 0:
        return Verdict("overfitting", onset_epoch=best + 2, **figures)
    real = last_real_improvement(history)
    if real is not None and last - real >= patience and not still_falling(history, patience):
        figures["epochs_since_best"] = last - real
        return Verdict("plateau", onset_epoch=real + 2, **figures)
    return Verdict("improving", **figures)
