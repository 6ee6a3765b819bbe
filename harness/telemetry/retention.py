"""How much telemetry a long job keeps in MLflow, and where the rest goes.

A node sampling 6 GPUs every second for a week would write about 7 million rows into the
tracking store, and MLflow's system-metrics charts would page through all of them.  So the
store gets every sample for the first ``full_rate_s`` (an hour by default: start-up problems
need full resolution), then one mean (under the metric's own name, so its chart goes on) and
one maximum (``<name>_max``: a spike a mean would hide) per metric per ``window_s``, and after
the first day per ten windows (a chart of a week shows ~320 points: finer rows only cost its
loading time).  A week then holds about 3,600 + 2 x (1,380 + 864) rows per metric instead of
605,000.

Every sample still goes to a gzip-compressed CSV beside the run (``time_s,metric,value``, one
line per reading), logged as the artifact ``telemetry/<host>-<start time>.csv.gz`` when the job ends.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Callable, Optional

MAX_SUFFIX = "_max"
COARSER_AFTER_S = 86400.0  # after a day, windows ten times as long
COARSER_FACTOR = 10


class Retention:
    """A telemetry sink in front of ``sink(metrics, t)``: full rate first, then window means
    and maxima; every reading also into ``archive`` (a .csv.gz) when given."""

    def __init__(self, sink: Callable[[dict, float], None], full_rate_s: float = 3600.0,
                 window_s: float = 60.0, archive: Optional[Path] = None):
        self.sink, self.full_rate_s, self.window_s = sink, full_rate_s, window_s
        self.tracker = getattr(sink, "tracker", None)  # another node's own sender, if any
        self.archive_path = archive
        self._archive = None
        if archive is not None:
            archive.parent.mkdir(parents=True, exist_ok=True)
            self._archive = gzip.open(archive, "at", compresslevel=6)
            if archive.stat().st_size == 0:
                self._archive.write("time_s,metric,value\n")
        self.start: Optional[float] = None
        self._window: Optional[tuple] = None  # (start, length) in seconds from the job's start
        self._sums: dict = {}
        self._counts: dict = {}
        self._maxima: dict = {}

    def __call__(self, metrics: dict, t: float) -> None:
        if self._archive is not None:
            self._archive.writelines(f"{t:.3f},{k},{v:.6g}\n" for k, v in metrics.items())
        if self.start is None:
            self.start = t
        if t - self.start < self.full_rate_s:
            self.sink(metrics, t)
            return
        window = self._window_of(t - self.start)
        if window != self._window:
            self._flush()
            self._window = window
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
            self._maxima[key] = max(self._maxima.get(key, value), value)

    def _window_of(self, age: float) -> tuple[float, float]:
        """(start, length) of the window a sample ``age`` seconds into the job falls in."""
        coarse_from = max(COARSER_AFTER_S, self.full_rate_s)
        origin, length = ((self.full_rate_s, self.window_s) if age < coarse_from
                          else (coarse_from, self.window_s * COARSER_FACTOR))
        return origin + math.floor((age - origin) / length) * length, length

    def _flush(self) -> None:
        if not self._counts:
            return
        origin, length = self._window
        coarse_from = max(COARSER_AFTER_S, self.full_rate_s)
        end = self.start + (min(origin + length, coarse_from) if origin < coarse_from
                            else origin + length)
        reduced = {k: self._sums[k] / self._counts[k] for k in self._counts}
        reduced.update({k + MAX_SUFFIX: v for k, v in self._maxima.items()})
        self._sums, self._counts, self._maxima = {}, {}, {}
        self.sink(reduced, end)

    def close(self) -> Optional[Path]:
        """Send the last (partial) window and close the archive; the archive's path."""
        self._flush()
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        return self.archive_path


def rows_bound(seconds: float, interval_s: float, full_rate_s: float, window_s: float) -> int:
    """The most rows one metric (with its maximum) can put in the store over ``seconds``."""
    coarse_from = max(COARSER_AFTER_S, full_rate_s)
    full = min(seconds, full_rate_s) / interval_s + 1
    fine = max(0.0, min(seconds, coarse_from) - full_rate_s) / window_s + 1
    coarse = max(0.0, seconds - coarse_from) / (window_s * COARSER_FACTOR) + 1
    return math.ceil(full + 2 * (fine + coarse))
