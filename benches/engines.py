#!/usr/bin/env python3
"""The two engines side by side: Horovod against TensorFlow's MultiWorkerMirroredStrategy.

    .venv/bin/python benches/engines.py [--repeats 3] [--np 2]

The MNIST MLP (a random file in mnist.npz format, 12,000 images) and the lens finder (2,000
simulated 32x32 images, simulated once before the timed runs) each run on 2 processes with
each engine, alternated (horovod, tf, tf, horovod, ...) so drifts in machine load hit both
alike.  Everything else is as users run it: tracking into a new SQLite file, telemetry on, a
checkpoint every epoch.  Per job it prints the throughput (mean samples/s over the epochs after
the first) and the whole-process wall time of each engine, and the ratios tf/horovod.  Needs
both environments (make setup; make setup ENGINE=tf).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness.files import REPO
from mnist_file import make_mnist  # benches/, beside this script

RATE = re.compile(r"^epoch +(\d+)/\d+ .* (\d+) samples/s$")
ENGINES = ("horovod", "tf")


def jobs(work: Path) -> dict:
    mnist = work / "mnist.npz"
    make_mnist(mnist, 12000)
    return {
        "mnist_mlp": ["jobs/mnist_mlp.yaml", f"data.path={mnist}", "training.epochs=4"],
        "lensfinder_cnn": ["jobs/lensfinder_cnn.yaml", "data.n_images=2000", "data.num_pix=32",
                           "training.epochs=3"],
    }


def run(job: list[str], engine: str, np_: int, work: Path) -> tuple[float, float]:
    """(samples/s after the first epoch, whole-process seconds) of one `harness run`."""
    tag = uuid.uuid4().hex[:8]
    sets = [*job[1:], f"training.engine={engine}", f"checkpoint.dir={work / 'ck' / tag}"]
    cmd = [sys.executable, "-m", "harness.cli", "run", str(REPO / job[0]), "--np", str(np_)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / f'{tag}.db'}",
               TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {job[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rates = [float(m.group(2)) for line in done.stdout.splitlines()
             if (m := RATE.match(line)) and int(m.group(1)) > 1]
    return (statistics.mean(rates) if rates else float("nan")), seconds


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--np", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name, job in jobs(work).items():
            run(job[:1] + job[1:-1] + ["training.epochs=1"], "horovod", 1, work)  # fills caches
            got = {e: [] for e in ENGINES}
            for i in range(args.repeats):
                for engine in (ENGINES if i % 2 == 0 else ENGINES[::-1]):
                    got[engine].append(run(job, engine, args.np, work))
                    rate, seconds = got[engine][-1]
                    print(f"  {name} {engine:<8} {rate:8.0f} samples/s  {seconds:6.1f} s", flush=True)
            rate = {e: statistics.median(r for r, _ in got[e]) for e in ENGINES}
            wall = {e: statistics.median(s for _, s in got[e]) for e in ENGINES}
            print(f"{name}: throughput horovod {rate['horovod']:.0f}, tf {rate['tf']:.0f} samples/s, "
                  f"tf/horovod {rate['tf'] / rate['horovod']:.2f}; whole process horovod "
                  f"{wall['horovod']:.1f} s, tf {wall['tf']:.1f} s, tf/horovod "
                  f"{wall['tf'] / wall['horovod']:.2f} ({args.np} processes, {args.repeats} runs each)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
