#!/usr/bin/env python3
"""Harness overhead: `harness run` against a bare Horovod Keras script, side by side in one run.

    .venv/bin/python benches/harness_vs_bare.py [--np 2] [--repeats 3] [--epochs 5]

Same model (the small CNN of jobs/synthetic.py), data (random batches made on
the device), batch, optimizer and thread settings.  The harness runs as users
run it: tracking into a local SQLite file, telemetry on, checkpoints at the
end.  Runs alternate (bare, harness, harness, bare, ...) so drifts in machine
load hit both alike.  Each figure is the mean samples/s of a run's epochs
after the first; the ratio harness/bare is what the issue asks to be >= 0.99.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.files import REPO  # noqa: E402 (benches run with the project installed)
RATE = re.compile(r"^(?:\[\d+\]<stdout>:)?epoch +(\d+)/\d+ .* (\d+) samples/s$")


def rates(output: str) -> float:
    found = [float(m.group(2)) for line in output.splitlines()
             if (m := RATE.match(line)) and int(m.group(1)) > 1]
    if not found:
        raise RuntimeError(f"no epoch lines in:\n{output[-2000:]}")
    return statistics.mean(found)


def bare(args, work: str) -> float:
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    cmd = [horovodrun, "--gloo", "-np", str(args.np), "-H", f"localhost:{args.np}", sys.executable,
           str(REPO / "benches" / "bare_horovod_keras.py"), "--epochs", str(args.epochs),
           "--samples", str(args.samples)]
    return rates(subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout)


def harness(args, work: str) -> float:
    cmd = [sys.executable, "-m", "harness.cli", "run", str(REPO / "jobs" / "synthetic.yaml"),
           "--np", str(args.np), "--set", f"training.epochs={args.epochs}",
           "--set", f"data.samples_per_epoch={args.samples}",
           "--set", f"checkpoint.every_epochs={args.epochs}"]
    return rates(subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=8192)
    args = p.parse_args()
    got = {"bare": [], "harness": []}
    for i in range(args.repeats):
        order = ("bare", "harness") if i % 2 == 0 else ("harness", "bare")
        for name in order:
            with tempfile.TemporaryDirectory() as work:
                got[name].append((bare if name == "bare" else harness)(args, work))
            print(f"  {name:<7} {got[name][-1]:.0f} samples/s", flush=True)
    b, h = statistics.mean(got["bare"]), statistics.mean(got["harness"])
    spread = lambda v: f"{min(v):.0f}..{max(v):.0f}"  # noqa: E731
    print(f"bare Horovod {b:.0f} samples/s ({spread(got['bare'])}), harness {h:.0f} samples/s "
          f"({spread(got['harness'])}): ratio harness/bare {h / b:.3f} "
          f"({args.np} processes, {args.repeats} runs each, {args.epochs - 1} timed epochs per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
