#!/usr/bin/env python3
"""Cost of one telemetry tick, per GPU, fast ticks and slow ticks (PCIe, process list) apart.

    python benches/sampler_cost.py [--ticks 50]

Needs only nvidia-ml-py and psutil.  Compares against a host-only tick in the
same run, so the GPU part is the difference; prints milliseconds and the share
of a 1 s interval the sampler thread is busy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.telemetry.sampler import SLOW_EVERY, Sampler  # noqa: E402


def timed_ticks(sampler: Sampler, ticks: int) -> tuple[list, list]:
    fast, slow = [], []
    for _ in range(ticks):
        is_slow = sampler.ticks % SLOW_EVERY == 0
        began = time.perf_counter()
        sampler.tick()
        (slow if is_slow else fast).append((time.perf_counter() - began) * 1000)
    return fast, slow


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ticks", type=int, default=50)
    args = p.parse_args()
    host_only = Sampler(lambda m, t: None, nvml_loader=lambda: (_ for _ in ()).throw(ImportError("off")),
                        notify=lambda m: None).open()
    base_fast, _ = timed_ticks(host_only, args.ticks)
    full = Sampler(lambda m, t: None, notify=print).open()  # no thread: this script ticks by hand
    if not full.gpus:
        print(f"no GPU: host-only tick {statistics.median(base_fast):.3f} ms")
        return 0
    fast, slow = timed_ticks(full, args.ticks)
    n = len(full.gpus)
    per_gpu_fast = (statistics.median(fast) - statistics.median(base_fast)) / n
    per_gpu_slow = (statistics.median(slow) - statistics.median(base_fast)) / n
    avg = (per_gpu_fast * (SLOW_EVERY - 1) + per_gpu_slow) / SLOW_EVERY
    print(f"{n} GPU(s) ({full.gpus[0].name}); host-only tick {statistics.median(base_fast):.3f} ms")
    print(f"per GPU: fast tick {per_gpu_fast:.3f} ms, slow tick {per_gpu_slow:.3f} ms, "
          f"average {avg:.3f} ms = {avg / 10:.3f}% of a 1 s interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
