"""What the telemetry says at the end of a run: per-GPU figures and flags a physicist can act on.

Pure arithmetic on recorded samples (``Sampler.history`` of every node), so it
is tested on made-up series and needs neither NVML nor TensorFlow.
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


def gpu_series(history: Sequence[tuple[float, dict]]) -> dict:
    """{(host, index): {metric: (times, values)}} from a sampler history."""
    series: dict = {}
    for t, metrics in history:
        for key, value in metrics.items():
            m = _GPU_KEY.match(key)
            if m:
                per = series.setdefault((m["host"], int(m["index"])), {})
                per.setdefault(m["metric"], ([], []))
                per[m["metric"]][0].append(t)
                per[m["metric"]][1].append(value)
    return series


def _durations(times: list) -> np.ndarray:
    """Seconds each sample stands for: the gap to the next one (the last repeats the median)."""
    t = np.asarray(times, dtype=float)
    if len(t) < 2:
        return np.ones_like(t)
    gaps = np.diff(t)
    return np.append(gaps, np.median(gaps))


def summarize_gpu(per: dict, memory_total_mb: float) -> dict:
    out = {}
    if "utilization_percentage" in per:
        times, util = per["utilization_percentage"]
        util, weights = np.asarray(util, float), _durations(times)
        out["utilization_mean_percentage"] = float(np.average(util, weights=weights))
        out["utilization_p95_percentage"] = float(np.percentile(util, 95))
        out["idle_fraction"] = float(weights[util < IDLE_BELOW_PERCENT].sum() / weights.sum())
        out["gpu_hours"] = float(weights.sum() / 3600.0)
    if "memory_usage_megabytes" in per:
        out["memory_peak_megabytes"] = float(max(per["memory_usage_megabytes"][1]))
        if memory_total_mb:
            out["memory_peak_fraction"] = out["memory_peak_megabytes"] / memory_total_mb
    if "power_usage_watts" in per:
        times, power = per["power_usage_watts"]
        out["power_mean_watts"] = float(np.average(power, weights=_durations(times)))
    if "energy_joules" in per:
        out["energy_wh"] = float(per["energy_joules"][1][-1] / 3600.0)
    if "clock_event_reasons" in per:
        times, reasons = per["clock_event_reasons"]
        weights = _durations(times)
        for bit, label in THROTTLE_REASONS.items():
            hit = np.array([int(r) & bit != 0 for r in reasons])
            if hit.any():
                out[f"throttled_s/{label}"] = float(weights[hit].sum())
        total = weights.sum()
        any_hit = np.array([int(r) & sum(THROTTLE_REASONS) != 0 for r in reasons])
        out["throttled_fraction"] = float(weights[any_hit].sum() / total) if total else 0.0
    return out


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
    """Per-GPU summaries and the flags; ``memory_totals`` is {(host, index): MB (10^6 bytes)}."""
    summaries = {key: summarize_gpu(per, memory_totals.get(key, 0.0))
                 for key, per in gpu_series(history).items()}
    return summaries, flags(summaries)


def as_metrics(summaries: dict) -> dict:
    """MLflow metric names for the summaries: telemetry/<host>/gpu_<i>/<figure>."""
    return {f"telemetry/{host}/gpu_{index}/{key.replace(' ', '_').replace('(', '').replace(')', '')}": v
            for (host, index), s in summaries.items() for key, v in s.items()}
