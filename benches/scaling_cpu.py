#!/usr/bin/env python3
"""1 against 2 local processes (one thread each) for the small CNN and ResNet-50, with the model.

    .venv/bin/python benches/scaling_cpu.py [--repeats 5]

Runs `harness scale --local --gpus 1,2` twice and prints each table with the
communication model's predicted efficiency and its diagnosis.  First it
measures the machine's own ceiling: the same single-threaded matrix
multiplications in 1 and then 2 independent processes (no Horovod, no
TensorFlow).  If two processes do not reach 2x there, no training can.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from harness.files import REPO  # noqa: E402 (benches run with the project installed)
MODELS = {
    "small_cnn": ["data.model=small_cnn", "data.samples_per_epoch=4096"],
    # 64 px and batch 16 keep ResNet-50 to about a minute per size on two CPU cores.
    "resnet50": ["data.model=resnet50", "data.image_size=64", "training.batch_size=16",
                 "data.samples_per_epoch=256"],
}


MATMUL = """
import time, numpy as np
a = np.random.default_rng(0).random((512, 512))
start = time.perf_counter()
for _ in range(60):
    a @ a
print(time.perf_counter() - start)
"""


def machine_ceiling() -> float:
    """Work rate of 2 concurrent single-thread processes over 1 process alone (ideal 2.0)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def wall(k: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", MATMUL], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return max(float(p.communicate()[0]) for p in procs)

    one = min(wall(1) for _ in range(3))
    two = min(wall(2) for _ in range(3))
    return 2 * one / two


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default="small_cnn,resnet50")
    args = p.parse_args()
    ceiling = machine_ceiling()
    print(f"machine ceiling: 2 single-thread matmul processes do {ceiling:.2f}x the work of one "
          f"(efficiency {ceiling / 2:.0%})", flush=True)
    for name in args.models.split(","):
        cmd = [sys.executable, "-m", "harness.cli", "scale", str(REPO / "jobs" / "synthetic.yaml"),
               "--local", "--gpus", "1,2", "--repeats", str(args.repeats)]
        for override in MODELS[name]:
            cmd += ["--set", override]
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout
        table = out[out.index("  N  samples/s"):]
        print(f"== {name}\n" + "\n".join(line for line in table.splitlines()
                                          if not line.startswith("scale: parent")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
