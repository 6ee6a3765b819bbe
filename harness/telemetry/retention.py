"""How much telemetry a long job keeps in MLflow, and where the rest goes.

A node sampling 6 GPUs every second for a week would write about 7 million rows into the
tracking store, and MLflow's system-metrics charts would page through all of them.  So the
store gets every sample for the first ``full_rate_s`` (an hour by default: start-up problems
need full resolution), then one value per metric per ``window_s``, and after the first day per
ten windows (a chart of a week shows ~320 points: finer rows only cost its loading time).  A
week then holds about 3,600 + 1,380 + 864 rows per series instead of 605,000.

The window's value is what the reading means (``reduction_of``): a gauge (utilization, power,
temperature, memory) keeps its mean under its own name, so its chart goes on, and its maximum as
``<name>_max`` (a spike a mean would hide); a clock keeps its mean only (a slow-down shows in the
mean, and its maximum is the card's boost clock); a running total (energy, network bytes) keeps
its last reading, as a mean of a total is no total; a bitmask (the clock-event reasons) keeps
every bit seen in the window.  Each series costs the UI one request per chart, so a series
nobody would read is not stored.

Every sample still goes to a gzip-compressed CSV beside the run (``time_s,metric,value``, one
line per reading), logged as the artifact ``telemetry/<host>-<start time>.csv.gz`` when the job ends.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Callable, Optional

MAX_SUFFIX = "_max"
# The sampler's readings that are not gauges, by the end of their names.
LEVELS = ("sm_clock_mhz", "memory_clock_mhz")
TOTALS = ("energy_joules", "network_receive_megabytes", "network_transmit_megabytes")
FLAGS = ("clock_event_reasons",)


def reduction_of(name: str) -> str:
    """How a window reduces the metric ``name``: gauge, level, total or flags."""
    for kind, endings in (("level", LEVELS), ("total", TOTALS), ("flags", FLAGS)):
        if name.endswith(endings):
            return kind
    return "gauge"
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
        self._held: dict = {}  # a gauge's maximum, a total's last reading, the flags' union
        self._kinds: dict = {}  # metric name -> reduction_of(name), worked out once

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
            self._held[key] = _hold(self._kind(key), self._held.get(key), value)

    def _kind(self, key: str) -> str:
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = reduction_of(key)
        return kind

    def _window_of(self, age: float) -> tuple[float, float]:
        """(start, length) of the window a sample ``age`` seconds into the job falls in."""
        coarse_from = _coarse_from(self.full_rate_s)
        origin, length = ((self.full_rate_s, self.window_s) if age < coarse_from
                          else (coarse_from, self.window_s * COARSER_FACTOR))
        return origin + math.floor((age - origin) / length) * length, length

    def _flush(self) -> None:
        if not self._counts:
            return
        origin, length = self._window
        coarse_from = _coarse_from(self.full_rate_s)
        end = self.start + (min(origin + length, coarse_from) if origin < coarse_from
                            else origin + length)
        reduced = {}
        for key, count in self._counts.items():
            kind = self._kinds[key]
            if kind in ("gauge", "level"):
                reduced[key] = self._sums[key] / count
            if kind == "gauge":
                reduced[key + MAX_SUFFIX] = self._held[key]
            elif kind != "level":
                reduced[key] = float(self._held[key])
        self._sums, self._counts, self._held = {}, {}, {}
        self.sink(reduced, end)

    def close(self) -> Optional[Path]:
        """Send the last (partial) window and close the archive; the archive's path."""
        self._flush()
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        return self.archive_path


def _coarse_from(full_rate_s: float) -> float:
    """Seconds into the job after which windows are ten times as long."""
    return max(COARSER_AFTER_S, full_rate_s)


def _hold(kind: str, held: Optional[float], value: float) -> Optional[float]:
    """What a window keeps of ``kind``'s readings besides their sum, after ``value``."""
    if kind == "gauge":
        return value if held is None else max(held, value)
    if kind == "flags":
        return int(held or 0) | int(value)
    return value if kind == "total" else None


def rows_bound(seconds: float, interval_s: float, full_rate_s: float, window_s: float) -> int:
    """The most rows one gauge (with its maximum) can put in the store over ``seconds``."""
    coarse_from = _coarse_from(full_rate_s)
    full = min(seconds, full_rate_s) / interval_s + 1
    fine = max(0.0, min(seconds, coarse_from) - full_rate_s) / window_s + 1
    coarse = max(0.0, seconds - coarse_from) / (window_s * COARSER_FACTOR) + 1
    return math.ceil(full + 2 * (fine + coarse))
