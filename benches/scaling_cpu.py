#!/usr/bin/env python3
"""1 against 2 local processes (one thread each) for the small CNN and ResNet-50, with the model.

    .venv/bin/python benches/scaling_cpu.py [--repeats 5]

Runs `harness scale --local --gpus 1,2` twice and prints each table with the
communication model's predicted efficiency and its diagnosis.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "small_cnn": ["data.model=small_cnn", "data.samples_per_epoch=4096"],
    # 64 px and batch 16 keep ResNet-50 to about a minute per size on two CPU cores.
    "resnet50": ["data.model=resnet50", "data.image_size=64", "training.batch_size=16",
                 "data.samples_per_epoch=256"],
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default="small_cnn,resnet50")
    args = p.parse_args()
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
