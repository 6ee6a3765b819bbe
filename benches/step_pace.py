#!/usr/bin/env python3
"""Steady-state samples per second of two ways to train the same job, alternated in one run.

    .venv/bin/python benches/step_pace.py --job mnist --compare plain      # harness / plain Keras, 1 process
    .venv/bin/python benches/step_pace.py --job lens  --compare plain
    .venv/bin/python benches/step_pace.py --job mnist --compare horovod --np 2  # harness / bare Horovod
    .venv/bin/python benches/step_pace.py --job mnist --compare spe        # steps_per_execution 8 / 1
    .venv/bin/python benches/step_pace.py --job lens  --compare jit        # jit_compile on / off
    .venv/bin/python benches/step_pace.py --job mnist --compare profile    # epoch 2 profiled / not

Jobs: ``mnist`` is the lecture's MNIST MLP (60,000 random images in mnist.npz format, batch 128,
RMSprop); ``lens`` is the lens-finder CNN on its demo simulation (cached after the first run).
The harness runs as users run it (tracking to a new SQLite file, telemetry, checkpoints).  Each
figure is the median over a run's epochs 2..E (epoch 1 traces and compiles); runs alternate
(A, B, B, A, ...) so drifts in machine load hit both alike; the ratio is of the medians of the
runs.  The baselines are benches/baseline_keras.py.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.files import REPO
from mnist_file import make_mnist  # benches/, beside this script

HARNESS_RATE = re.compile(r"^epoch +(\d+)/\d+ .* (\d+) samples/s")
BASELINE_RATE = re.compile(r"^(?:\[\d+\]<stdout>:)?epoch (\d+): (\d+) samples/s")
JOBS = {"mnist": "mnist_mlp.yaml", "lens": "lensfinder_cnn.yaml"}


def job_settings(args, scratch: Path) -> list[str]:
    settings = [f"training.epochs={args.epochs}"]
    if args.job == "mnist":
        data = scratch / "mnist.npz"
        make_mnist(data, args.samples)
        settings += [f"data.path={data}", "training.warmup_epochs=0"]
    return settings


def harness(args, settings: list[str], extra: list[str] = (), flags: list[str] = ()) -> list[str]:
    sets = [a for s in [*settings, *extra] for a in ("--set", s)]
    return [sys.executable, "-m", "harness.cli", "run", str(REPO / "jobs" / JOBS[args.job]),
            "--np", str(args.np), *sets, *flags]


def baseline(args, settings: list[str]) -> list[str]:
    script = [sys.executable, str(REPO / "benches" / "baseline_keras.py"),
              str(REPO / "jobs" / JOBS[args.job]), *[a for s in settings for a in ("--set", s)]]
    if args.compare == "plain":
        return script
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    return [horovodrun, "--gloo", "-np", str(args.np), "-H", f"localhost:{args.np}", *script,
            "--horovod"]


def variants(args, settings: list[str]) -> dict:
    """Name -> command; the first is the numerator of the ratio."""
    if args.compare in ("plain", "horovod"):
        return {"harness": harness(args, settings, args.harness_set),
                f"{args.compare} Keras": baseline(args, settings)}
    if args.compare == "spe":
        return {"steps_per_execution 8": harness(args, settings, ["training.steps_per_execution=8"]),
                "steps_per_execution 1": harness(args, settings)}
    if args.compare == "jit":
        return {"jit_compile on": harness(args, settings, ["training.jit_compile=true"]),
                "jit_compile off": harness(args, settings)}
    # The profiled run traces every step of epoch 2 (after the first epoch's compilation): that
    # epoch's rate, profiled over not, is the profile's cost per step.
    per_epoch = -(-args.samples // (128 * args.np))
    steps = f"{per_epoch + 1}:{2 * per_epoch}"
    return {"profiled": harness(args, settings, flags=["--profile-steps", steps]),
            "unprofiled": harness(args, settings)}


def median_rate(cmd: list[str], profiled_epoch: int | None) -> float:
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rates = {}
    for line in done.stdout.splitlines():
        m = HARNESS_RATE.match(line) or BASELINE_RATE.match(line)
        if m and int(m.group(1)) > 1:
            rates[int(m.group(1))] = float(m.group(2))
    if profiled_epoch is not None:  # only the epoch that holds the profiled steps
        rates = {e: r for e, r in rates.items() if e == profiled_epoch}
    if not rates:
        raise RuntimeError(f"no epoch lines in:\n{done.stdout[-2000:]}")
    return statistics.median(rates.values())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=sorted(JOBS), default="mnist")
    p.add_argument("--compare", choices=("plain", "horovod", "spe", "jit", "profile"),
                   default="plain")
    p.add_argument("--np", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--samples", type=int, default=60000, help="mnist: training images")
    p.add_argument("--harness-set", action="append", default=[], metavar="KEY=VALUE",
                   help="plain/horovod: a spec setting for the harness only (to find a cost)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        settings = job_settings(args, Path(scratch))
        runs = variants(args, settings)
        got = {name: [] for name in runs}
        for i in range(args.repeats):
            for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
                epoch = 2 if args.compare == "profile" else None  # the profiled epoch, both
                got[name].append(median_rate(runs[name], epoch))
                print(f"  {name:<22} {got[name][-1]:8.0f} samples/s", flush=True)
    (a, av), (b, bv) = [(n, statistics.median(v)) for n, v in got.items()]
    spread = {n: f"{min(v):.0f}..{max(v):.0f}" for n, v in got.items()}
    print(f"{args.job}, {args.np} process(es): {a} {av:.0f} samples/s ({spread[a]}), {b} {bv:.0f} "
          f"samples/s ({spread[b]}): ratio {a} / {b} = {av / bv:.3f} "
          f"({args.repeats} runs each, median of epochs 2..{args.epochs})")
    return 0



if __name__ == "__main__":
    sys.exit(main())
