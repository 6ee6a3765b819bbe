#!/usr/bin/env python3
"""GPU health check: does NVML telemetry tell the truth about a GPU doing real work?

Needs only nvidia-ml-py, psutil and one of PyTorch, CuPy or TensorFlow to load
the GPU; also useful to administrators as a node check::

    python scripts/gpu_check.py [--gpu 0] [--idle 5] [--load 15] [--interval 0.5]

It samples the GPU idle, under a matrix-multiply load, then idle again, with
the harness's own sampler (harness/telemetry.py), and checks that the readings
are plausible: utilisation above 50% under load, memory used rises, power
above idle, clocks above zero, and the GPU NVML reports busy (by UUID) is the
one the framework computed on.  Exit code 0 when every check passes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.telemetry.sampler import Sampler  # noqa: E402
from harness.telemetry.summary import summarize  # noqa: E402


class Load:
    """A matrix-multiply loop on one GPU with whichever framework is installed."""

    def __init__(self, gpu: int):
        self.gpu = gpu
        self.framework, self.uuid, self.step = self._setup()

    def _setup(self):
        try:
            import torch
            device = torch.device(f"cuda:{self.gpu}")
            a = torch.randn(8192, 8192, device=device)
            props = torch.cuda.get_device_properties(device)
            uuid = str(getattr(props, "uuid", "")) or None

            def step():
                for _ in range(20):
                    torch.matmul(a, a, out=b)
                torch.cuda.synchronize(device)
            b = torch.empty_like(a)
            return "torch", uuid, step
        except ImportError:
            pass
        import cupy
        cupy.cuda.Device(self.gpu).use()
        a = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)

        def step():
            for _ in range(20):
                a @ a
            cupy.cuda.Device(self.gpu).synchronize()
        return "cupy", None, step

    def run(self, seconds: float) -> int:
        end, steps = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            self.step()
            steps += 1
        return steps


def phase_mean(history, start, end, key):
    values = [m[key] for t, m in history if start <= t <= end and key in m]
    return sum(values) / len(values) if values else float("nan"), len(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0, help="CUDA index of the GPU to check")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before and after")
    parser.add_argument("--load", type=float, default=15.0, help="seconds under load")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval, seconds")
    args = parser.parse_args()
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA index = bus order, as NVML's sort

    sampler = Sampler(sink=lambda metrics, t: None, interval_s=args.interval)
    sampler.start()
    if not sampler.gpus:
        print("FAIL: NVML found no GPU")
        return 1
    gpu = sampler.gpus[args.gpu]
    print(f"GPU {gpu.index}: {gpu.name}  uuid {gpu.uuid}  bus {gpu.pci_bus_id}  "
          f"{gpu.memory_total_mb:.0f} MB  power limit {gpu.power_limit_w:.0f} W")

    t0 = time.time()
    time.sleep(args.idle)
    load = Load(args.gpu)
    t1 = time.time()
    steps = load.run(args.load)
    t2 = time.time()
    busy_pids = {p.pid for p in sampler.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)}
    time.sleep(args.idle)
    t3 = time.time()
    sampler.stop()
    print(f"load: {load.framework}, {steps} x 20 matmuls of 8192^2 in {t2 - t1:.1f} s")

    host = sampler.host
    key = lambda m: f"system/{host}/gpu_{gpu.index}_{m}"  # noqa: E731
    rows = {}
    print(f"{'metric':<32}{'idle before':>14}{'under load':>14}{'idle after':>14}")
    for metric in ("utilization_percentage", "memory_usage_megabytes", "power_usage_watts",
                   "temperature_celsius", "sm_clock_mhz", "memory_clock_mhz", "pcie_tx_kbps",
                   "pcie_rx_kbps", "energy_joules", "clock_event_reasons"):
        before = phase_mean(sampler.timeline.items, t0 + 1, t1, key(metric))[0]
        during = phase_mean(sampler.timeline.items, t1 + 2, t2, key(metric))[0]  # skip the ramp-up
        after = phase_mean(sampler.timeline.items, t2 + 2, t3, key(metric))[0]
        rows[metric] = (before, during, after)
        print(f"{metric:<32}{before:>14.1f}{during:>14.1f}{after:>14.1f}")

    util, mem, power, sm = (rows[m] for m in ("utilization_percentage", "memory_usage_megabytes",
                                              "power_usage_watts", "sm_clock_mhz"))
    uuid_ok = (load.uuid is None or load.uuid in gpu.uuid) and os.getpid() in busy_pids
    checks = [
        ("utilization above 50% under load", util[1] > 50),
        ("memory used rises under load", mem[1] > mem[0] + 100),
        ("power under load above idle", power[1] > power[0] * 1.2),
        ("SM clock above zero under load", sm[1] > 0),
        (f"the busy GPU is the one computing (uuid {load.uuid or 'n/a'}, our pid on it: "
         f"{os.getpid() in busy_pids})", uuid_ok),
        ("samples every tick", len(sampler.timeline.items) >= (t3 - t0) / args.interval * 0.8),
    ]
    summaries, flags = summarize(sampler.timeline.items, {(host, gpu.index): gpu.memory_total_mb})
    for (h, i), s in summaries.items():
        print(f"summary {h} GPU {i}: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(s.items())))
    for flag in flags:
        print(f"flag: {flag}")
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
