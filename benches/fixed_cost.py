#!/usr/bin/env python3
"""A job's fixed cost: whole-process time of `harness run` against a bare Horovod Keras script.

    .venv/bin/python benches/fixed_cost.py [--repeats 4] [--epochs 6] [--limit 12000] [--np 2]
                                           [--split]

The job is the lecture's MNIST MLP (2 processes, batch 128, RMSprop) on a random file in
mnist.npz format (12,000 training images, no download).  The bare script
(benches/bare_mnist_keras.py) trains the same model on the same data with nothing else; the
harness runs as users run it: tracking into a new local SQLite file, telemetry on, a checkpoint
every epoch, the plots and the HTML report at the end.  A third variant turns tracking and
telemetry off, to show where the rest goes.  Runs alternate so drifts in machine load hit all
alike; each prints its median wall time, and the harness's excess over the bare script.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.files import REPO
from mnist_file import make_mnist  # benches/, beside this script


def commands(args, data: Path) -> dict:
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    bare = [horovodrun, "--gloo", "-np", str(args.np), "-H", f"localhost:{args.np}", sys.executable,
            str(REPO / "benches" / "bare_mnist_keras.py"), "--data", str(data),
            "--epochs", str(args.epochs), "--limit", str(args.limit)]
    harness = [sys.executable, "-m", "harness.cli", "run", str(REPO / "jobs" / "mnist_mlp.yaml"),
               "--np", str(args.np), "--set", f"data.path={data}", "--set", f"data.limit={args.limit}",
               "--set", f"training.epochs={args.epochs}", "--set", "training.warmup_epochs=0"]
    quiet = harness + ["--set", "tracking.enabled=false", "--set", "telemetry.enabled=false"]
    variants = {"bare": bare, "harness": harness, "harness, tracking+telemetry off": quiet}
    if args.split:  # which of the two costs what
        variants["harness, telemetry off"] = harness + ["--set", "telemetry.enabled=false"]
    return variants


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as work:  # a new mlflow.db and checkpoint folder each time
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--limit", type=int, default=12000)
    p.add_argument("--np", type=int, default=2, help="processes (1 leaves a core free here)")
    p.add_argument("--split", action="store_true",
                   help="a fourth variant: tracking on, telemetry off")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "mnist.npz"
        make_mnist(data, args.limit)
        variants = commands(args, data)
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        for i in range(args.repeats):
            names = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in names:
                wall, used = timed(variants[name])
                times[name].append(wall)
                cpu[name].append(used)
                print(f"  run {i + 1}: {name:<34} {wall:6.1f} s, CPU {used:6.1f} s", flush=True)
    bare, bare_cpu = statistics.median(times["bare"]), statistics.median(cpu["bare"])
    for name, values in times.items():
        median, used = statistics.median(values), statistics.median(cpu[name])
        print(f"{name:<34} median {median:6.1f} s ({min(values):.1f}..{max(values):.1f}), "
              f"excess over bare {median - bare:+5.1f} s, ratio {median / bare:.2f}; "
              f"CPU {used:.1f} s ({used - bare_cpu:+.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
