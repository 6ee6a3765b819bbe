#!/usr/bin/env python3
"""What a local sweep costs and what running points side by side buys.

    .venv/bin/python benches/sweep_local.py [--repeats 1] [--epochs 10] [--points 4]

The job is the lecture's diabetes MLP, one process per point, the points a learning-rate grid.
Three ways to train the same points, alternated so drifts in machine load hit all alike:
``harness run`` once per point by hand (the baseline: what a physicist did before the sweep),
``harness sweep --local`` one at a time, and ``--max-parallel 2``.  Each variant tracks into a
new local SQLite file.  Prints the median wall times and the ratios to the baseline.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from harness.files import REPO

SPEC = REPO / "jobs" / "diabetes_mlp.yaml"
RATES = ("0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2")


def harness(*args) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


def by_hand(rates, epochs) -> list[list[str]]:
    return [harness("run", SPEC, "--np", 1, "--set", f"training.learning_rate={r}",
                    "--set", f"training.epochs={epochs}",
                    "--set", f"checkpoint.dir=runs/hand-{r}") for r in rates]


def swept(rates, epochs, at_once) -> list[list[str]]:
    return [harness("sweep", SPEC, "--local", "--grid", f"training.learning_rate={','.join(rates)}",
                    "--set", f"training.epochs={epochs}", "--max-parallel", at_once)]


def timed(commands: list[list[str]]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        start = time.perf_counter()
        for cmd in commands:
            done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=4, choices=range(2, len(RATES) + 1))
    args = parser.parse_args()
    rates = RATES[:args.points]
    variants = {"harness run per point (baseline)": by_hand(rates, args.epochs),
                "harness sweep --local": swept(rates, args.epochs, 1),
                "harness sweep --local --max-parallel 2": swept(rates, args.epochs, 2)}
    times = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, commands in variants.items():
            times[name].append(timed(commands))
            print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
    base = statistics.median(times["harness run per point (baseline)"])
    print(f"\n{args.points} points x {args.epochs} epochs, diabetes MLP, 1 process each "
          f"(medians of {args.repeats})")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<42} {median:7.1f} s   x{median / base:.2f} of the baseline")


if __name__ == "__main__":
    main()
