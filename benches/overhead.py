#!/usr/bin/env python3
"""Throughput with a harness feature on and off, side by side in one run.

    .venv/bin/python benches/overhead.py --feature tracking   [--np 2] [--repeats 2]
    .venv/bin/python benches/overhead.py --feature telemetry

Runs ``harness run jobs/synthetic.yaml`` alternately with the feature on and
off (interleaved, so drifts in machine load hit both alike), takes the mean
samples/s over each run's epochs after the first, and prints the ratio on/off.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile

from harness.files import REPO  # noqa: E402 (benches run with the project installed)
RATE = re.compile(r"^epoch +(\d+)/\d+ .* (\d+) samples/s$")
SWITCH = {"tracking": "tracking.enabled", "telemetry": "telemetry.enabled"}


def run_once(feature: str, on: bool, args) -> float:
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "harness.cli", "run", str(REPO / "jobs" / "synthetic.yaml"),
               "--np", str(args.np), "--set", f"training.epochs={args.epochs}",
               "--set", f"data.samples_per_epoch={args.samples}", "--set", f"{SWITCH[feature]}={str(on).lower()}"]
        out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout
    rates = [float(m.group(2)) for line in out.splitlines() if (m := RATE.match(line)) and int(m.group(1)) > 1]
    return statistics.mean(rates)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--feature", choices=sorted(SWITCH), required=True)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples", type=int, default=8192)
    args = p.parse_args()
    on, off = [], []
    for i in range(args.repeats):
        for flag, store in ((True, on), (False, off)) if i % 2 == 0 else ((False, off), (True, on)):
            store.append(run_once(args.feature, flag, args))
            print(f"  {args.feature} {'on ' if flag else 'off'}: {store[-1]:.0f} samples/s", flush=True)
    ratio = statistics.mean(on) / statistics.mean(off)
    print(f"{args.feature}: on {statistics.mean(on):.0f} samples/s, off {statistics.mean(off):.0f} "
          f"samples/s, ratio on/off {ratio:.3f} ({args.np} processes, {args.repeats} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
