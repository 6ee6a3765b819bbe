"""Throughput from cumulative counters, with warm-up dropped.

Fed cumulative (time, samples) readings; the window starts at reading number
``warmup_steps``, so the steps before it (graph tracing and compilation in
the first epoch) do not count.  Keys carry units.
"""
from __future__ import annotations


class Throughput:
    def __init__(self, warmup_steps: int = 1, processes: int = 1):
        self.warmup_steps = warmup_steps
        self.processes = processes
        self._steps = 0
        self._last = None  # (time_s, samples) of the latest update
        self._start = None  # (time_s, samples) when warm-up ended

    def update(self, time_s: float, samples: int) -> None:
        """Record cumulative ``samples`` processed (all ranks) at wall time ``time_s``."""
        if self._last is not None and (time_s < self._last[0] or samples < self._last[1]):
            raise ValueError(f"counters went backwards: {self._last} -> {(time_s, samples)}")
        self._steps += 1
        self._last = (time_s, samples)
        if self._steps == self.warmup_steps:
            self._start = self._last

    def compute(self) -> dict:
        if self._start is None or self._last is None or self._last[0] <= self._start[0]:
            return {}
        seconds = self._last[0] - self._start[0]
        rate = (self._last[1] - self._start[1]) / seconds
        return {"throughput/samples_per_sec": rate,
                "throughput/samples_per_sec_per_gpu": rate / self.processes}
