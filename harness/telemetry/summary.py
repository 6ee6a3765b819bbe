"""What the telemetry says at the end of a run: per-GPU figures and flags a physicist can act on.

Pure arithmetic on samples, kept as running aggregates while the sampler runs (a week-long
job must not hold every tick in memory), so it is tested on made-up series and needs neither
NVML nor TensorFlow.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

IDLE_BELOW_PERCENT = 5.0
IDLE_FLAG_FRACTION = 0.30
STRAGGLER_RATIO = 0.8
THROTTLE_FLAG_FRACTION = 0.05
HEADROOM_FLAG_FRACTION = 0.5
# Clock-event reasons that mean the GPU was slowed against its will (nvmlClocksEventReason*).
THROTTLE_REASONS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)",
                    0x40: "thermal (hardware)", 0x80: "power brake"}
_GPU_KEY = re.compile(r"^system/(?P<host>[^/]+)/gpu_(?P<index>\d+)_(?P<metric>.+)$")


class Thinned:
    """At most ``limit`` items spread evenly over everything added, in bounded memory: when full,
    every other item is dropped and from then on only every 2^k-th new one is kept."""

    def __init__(self, limit: int):
        self.limit, self.items, self.stride, self.seen = limit, [], 1, 0

    def add(self, item) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) >= self.limit:
                self.items, self.stride = self.items[::2], self.stride * 2
        self.seen += 1


PERCENTILE_SAMPLES = 4096  # utilisation values kept for the p95: exact below, thinned above


class _Series:
    """One metric of one GPU: each sample weighs the time until the next one (the last one the
    mean gap), as a sampler that slowed down or stalled must not count its samples alike."""

    def __init__(self, on_sample):
        self.on_sample, self.last, self.first_t, self.count = on_sample, None, None, 0

    def add(self, t: float, value: float) -> None:
        if self.last is not None:
            self.on_sample(self.last[1], t - self.last[0])
        else:
            self.first_t = t
        self.last, self.count = (t, value), self.count + 1

    def close(self) -> None:
        if self.last is not None:
            span = self.last[0] - self.first_t
            self.on_sample(self.last[1], span / (self.count - 1) if self.count > 1 else 1.0)
            self.last = None


class GpuFigures:
    """Running aggregates of one GPU's samples: the figures the run reports, in O(1) memory
    (a week at 1 s is 600,000 samples per metric; the sampler keeps none of them)."""

    def __init__(self):
        self.util_sum = self.util_weight = self.idle_weight = 0.0
        self.util_values = Thinned(PERCENTILE_SAMPLES)
        self.memory_peak = None
        self.power_sum = self.power_weight = 0.0
        self.energy_last = None
        self.reasons_weight = self.reasons_any = 0.0
        self.reasons_by_bit = {bit: 0.0 for bit in THROTTLE_REASONS}
        self.series = {"utilization_percentage": _Series(self._utilization),
                       "power_usage_watts": _Series(self._power),
                       "clock_event_reasons": _Series(self._reasons)}

    def add(self, metric: str, t: float, value: float) -> None:
        if metric in self.series:
            self.series[metric].add(t, value)
        elif metric == "memory_usage_megabytes":
            self.memory_peak = value if self.memory_peak is None else max(self.memory_peak, value)
        elif metric == "energy_joules":
            self.energy_last = value

    def _utilization(self, value: float, weight: float) -> None:
        self.util_sum += value * weight
        self.util_weight += weight
        self.idle_weight += weight if value < IDLE_BELOW_PERCENT else 0.0
        self.util_values.add(value)

    def _power(self, value: float, weight: float) -> None:
        self.power_sum += value * weight
        self.power_weight += weight

    def _reasons(self, value: float, weight: float) -> None:
        self.reasons_weight += weight
        for bit in THROTTLE_REASONS:
            if int(value) & bit:
                self.reasons_by_bit[bit] += weight
        if int(value) & sum(THROTTLE_REASONS):
            self.reasons_any += weight

    def figures(self, memory_total_mb: float) -> dict:
        for series in self.series.values():
            series.close()
        out = {}
        if self.util_weight:
            out["utilization_mean_percentage"] = self.util_sum / self.util_weight
            out["utilization_p95_percentage"] = float(np.percentile(self.util_values.items, 95))
            out["idle_fraction"] = self.idle_weight / self.util_weight
            out["gpu_hours"] = self.util_weight / 3600.0
        if self.memory_peak is not None:
            out["memory_peak_megabytes"] = float(self.memory_peak)
            if memory_total_mb:
                out["memory_peak_fraction"] = out["memory_peak_megabytes"] / memory_total_mb
        if self.power_weight:
            out["power_mean_watts"] = self.power_sum / self.power_weight
        if self.energy_last is not None:
            out["energy_wh"] = float(self.energy_last / 3600.0)
        if self.reasons_weight:
            for bit, label in THROTTLE_REASONS.items():
                if self.reasons_by_bit[bit]:
                    out[f"throttled_s/{label}"] = self.reasons_by_bit[bit]
            out["throttled_fraction"] = self.reasons_any / self.reasons_weight
        return out


class RunningSummary:
    """Every GPU's running figures, fed one tick at a time by the sampler."""

    def __init__(self):
        self.gpus: dict = {}  # (host, index) -> GpuFigures
        self._keys: dict = {}  # metric key -> (GpuFigures, metric) or None: parsed once each

    def add(self, t: float, metrics: dict) -> None:
        for key, value in metrics.items():
            target = self._keys.get(key, False)
            if target is False:
                target = self._keys[key] = self._target(key)
            if target is not None:
                target[0].add(target[1], t, value)

    def _target(self, key: str):
        m = _GPU_KEY.match(key)
        if m is None:
            return None
        gpu = (m["host"], int(m["index"]))
        return self.gpus.setdefault(gpu, GpuFigures()), m["metric"]

    def summaries(self, memory_totals: dict) -> dict:
        return {gpu: figures.figures(memory_totals.get(gpu, 0.0))
                for gpu, figures in self.gpus.items()}


def flags(summaries: dict) -> list[str]:
    """Advice from the per-GPU summaries {(host, index): summary}."""
    advice = []
    means = {k: s["utilization_mean_percentage"] for k, s in summaries.items()
             if "utilization_mean_percentage" in s}
    best = max(means.values(), default=0.0)
    for (host, index), s in sorted(summaries.items()):
        name = f"{host} GPU {index}"
        if s.get("idle_fraction", 0) > IDLE_FLAG_FRACTION:
            advice.append(f"{name} idle {s['idle_fraction']:.0%} of the time: the input pipeline "
                          "is likely the bottleneck (more loader threads, prefetch, cache the data)")
        if len(means) > 1 and (host, index) in means and means[(host, index)] < STRAGGLER_RATIO * best \
                and best - means[(host, index)] > 10:
            advice.append(f"{name} is a straggler: {means[(host, index)]:.0f}% busy against "
                          f"{best:.0f}% on the busiest GPU; every step waits for it")
        if s.get("throttled_fraction", 0) > THROTTLE_FLAG_FRACTION:
            why = ", ".join(k.split("/", 1)[1] for k in s if k.startswith("throttled_s/"))
            advice.append(f"{name} throttled {s['throttled_fraction']:.0%} of the time ({why}): "
                          "check cooling and power limits")
        if 0 < s.get("memory_peak_fraction", 1) < HEADROOM_FLAG_FRACTION:
            advice.append(f"{name} peaked at {s['memory_peak_fraction']:.0%} of its memory: "
                          f"a batch about {1 / s['memory_peak_fraction']:.1f}x larger would fit")
    return advice


def summarize(history: Sequence[tuple[float, dict]], memory_totals: dict) -> tuple[dict, list[str]]:
    """Per-GPU summaries and the flags of recorded ticks; ``memory_totals`` is
    {(host, index): MB (10^6 bytes)}."""
    running = RunningSummary()
    for t, metrics in history:
        running.add(t, metrics)
    summaries = running.summaries(memory_totals)
    return summaries, flags(summaries)


def as_metrics(summaries: dict) -> dict:
    """MLflow metric names for the summaries: telemetry/<host>/gpu_<i>/<figure>."""
    return {f"telemetry/{host}/gpu_{index}/{key.replace(' ', '_').replace('(', '').replace(')', '')}": v
            for (host, index), s in summaries.items() for key, v in s.items()}
