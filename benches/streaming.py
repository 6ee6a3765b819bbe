#!/usr/bin/env python3
"""Streaming from shards against the in-memory path: a rank's peak memory as the set grows, and
throughput on data that fits.

    .venv/bin/python benches/streaming.py memory [--small 300000] [--large 1200000]
    .venv/bin/python benches/streaming.py speed [--samples 60000] [--lens-images 6000] [--epochs 3]
                                                [--np 2]

``memory``: random 28x28 uint8 images (MNIST's shape) at two sizes, each as an .npz (the
in-memory path) and as a shard folder (``harness data pack``, 64 MB shards); the MNIST MLP
trains one epoch on 2 ranks from each; a sampler reads every worker's peak resident memory
(VmHWM) from /proc.  Printed: the largest rank's peak at each size and the ratio large/small,
streamed and in memory.  Also the training bytes each rank read, from the files dealt to it.

``speed``: the MNIST MLP (random images, from the .npz and from shards) and the lens CNN (its
simulation, in memory and packed into shards), alternated; the ratio of samples/s (epochs after
the first) streamed/in-memory for each.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness.files import REPO

MNIST = REPO / "jobs" / "mnist_mlp.yaml"
RATE = re.compile(r"^epoch +(\d+)/\d+ .* (\d+) samples/s")  # an input-bound note may follow


def images(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = np.empty((n, 28, 28), np.uint8)
    for start in range(0, n, 100_000):  # a chunk at a time: the bench itself stays small
        x[start:start + 100_000] = rng.integers(0, 256, (min(100_000, n - start), 28, 28), np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    test = rng.integers(0, 256, (10_000, 28, 28), np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=test, y_test=rng.integers(0, 10, 10_000).astype(np.uint8))
    return path


def pack(npz: Path, folder: Path, shard_mb: float) -> Path:
    subprocess.run([sys.executable, "-m", "harness.cli", "data", "pack", str(npz), str(folder),
                    "--shard-mb", str(shard_mb)], check=True, capture_output=True, text=True)
    return folder


class PeakMemory:
    """The largest VmHWM (peak resident set) of any worker process, polled from /proc."""

    def __init__(self):
        self.peaks: dict = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop.is_set():
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    cmdline = (status.parent / "cmdline").read_bytes()
                    if b"harness.runtime.worker" not in cmdline:
                        continue
                    hwm = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                except OSError:
                    continue
                if hwm:
                    pid = status.parent.name
                    self.peaks[pid] = max(self.peaks.get(pid, 0), int(hwm.group(1)) * 1024)
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def largest(self) -> int:
        return max(self.peaks.values(), default=0)


def train(data: Path, epochs: int, work: Path, must_finish: bool = True, spec: Path = MNIST,
          extra: tuple = (), ranks: int = 2) -> tuple[str, int, int]:
    """(output, the largest rank's peak memory in bytes, exit code)."""
    cmd = [sys.executable, "-m", "harness.cli", "run", str(spec), "--np", str(ranks),
           "--set", f"training.epochs={epochs}", "--set", f"checkpoint.every_epochs={epochs}",
           "--set", "tracking.enabled=false", *extra]
    if data is not None:
        cmd += ["--set", f"data.path={data}"]
    with PeakMemory() as memory:
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode != 0 and must_finish:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    return done.stdout + done.stderr, memory.largest, done.returncode


def rate(output: str) -> float:
    found = [float(m.group(2)) for line in output.splitlines()
             if (m := RATE.match(line)) and int(m.group(1)) > 1]
    return statistics.mean(found)


def rank_bytes(folder: Path) -> list[int]:
    from harness.data import shards as fmt
    from harness.runtime import streaming
    shards = fmt.read(folder)
    from harness.spec.loader import load_spec
    seed = load_spec(MNIST, [f"data.path={folder}"]).training.seed  # what the run dealt with
    dealt = streaming.deal_files(shards.split("train"), 2, seed)
    return [sum(f.bytes for f in share) for share in dealt]


def memory(args) -> int:
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        tmp = Path(tmp)
        peaks = {}
        for n in (args.small, args.large):
            npz = images(tmp / f"images-{n}.npz", n)
            shards = pack(npz, tmp / f"shards-{n}", args.shard_mb)
            for name, data in (("streamed", shards), ("in memory", npz)):
                work = tmp / f"work-{name.replace(' ', '')}-{n}"
                work.mkdir()
                # The in-memory path may not survive the large set: its peak so far is the figure.
                _, peaks[name, n], code = train(data, 1, work, must_finish=name == "streamed")
                ended = "" if code == 0 else f" (the run ended with exit {code})"
                print(f"  {name:<9} {n:>9} images: largest rank peak {peaks[name, n] / 2**20:.0f} "
                      f"MiB{ended}", flush=True)
            per_rank = rank_bytes(shards)
            total = sum(per_rank)
            print(f"  {n} images: the ranks read {', '.join(f'{b / total:.1%}' for b in per_rank)} "
                  f"of the {total / 1e6:.0f} MB training files each (disjoint files)", flush=True)
            npz.unlink()
        for name in ("streamed", "in memory"):
            ratio = peaks[name, args.large] / peaks[name, args.small]
            print(f"{name}: peak rank memory at {args.large} / at {args.small} images = {ratio:.2f}")
    return 0


def eight_files(train_bytes: int) -> float:
    """A shard size that gives the training set about eight files (at most 64 MB each)."""
    return round(min(64.0, max(0.05, train_bytes / 8 / 1e6)), 3)


def speed(args) -> int:
    """The MNIST MLP and the lens CNN, each from its in-memory arrays and from shards of the same
    data, alternated; samples/s of the epochs after the first."""
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        tmp = Path(tmp)
        npz = images(tmp / "images.npz", args.samples)
        lens = REPO / "jobs" / "lensfinder_cnn.yaml"
        lens_set = ("--set", f"data.n_images={args.lens_images}", "--set", "data.num_pix=48",
                    "--set", f"data.cache_dir={tmp / 'lens-cache'}")
        subprocess.run([sys.executable, "-m", "harness.cli", "data", "pack", str(lens),
                        str(tmp / "lens-shards"), *lens_set,
                        "--shard-mb", str(eight_files(args.lens_images * 48 * 48 * 3 * 4))],
                       check=True, capture_output=True, text=True)
        jobs = {"MNIST MLP": (MNIST, (), npz, pack(npz, tmp / "shards",
                                                  eight_files(args.samples * 28 * 28))),
                "lens CNN": (lens, lens_set, None, tmp / "lens-shards")}
        for job, (spec, extra, in_memory, shards) in jobs.items():
            got = {"in memory": [], "streamed": []}
            for i in range(args.repeats):
                order = ("in memory", "streamed") if i % 2 == 0 else ("streamed", "in memory")
                for name in order:
                    work = tmp / f"work-{job.replace(' ', '')}-{i}-{name.replace(' ', '')}"
                    work.mkdir()
                    out, _, _ = train(shards if name == "streamed" else in_memory, args.epochs,
                                      work, spec=spec, extra=extra, ranks=args.np)
                    got[name].append(rate(out))
                    print(f"  {job} {name:<9} {got[name][-1]:.0f} samples/s", flush=True)
            s, m = statistics.mean(got["streamed"]), statistics.mean(got["in memory"])
            print(f"{job}, {args.np} rank(s): streamed {s:.0f} samples/s, in memory {m:.0f}: ratio "
                  f"streamed/in-memory {s / m:.3f} ({args.repeats} runs each, {args.epochs - 1} "
                  "timed epochs per run)", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["memory", "speed"])
    p.add_argument("--small", type=int, default=300_000)
    p.add_argument("--large", type=int, default=1_200_000)
    p.add_argument("--samples", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--np", type=int, default=2, help="speed: ranks (1 leaves a core to the input)")
    p.add_argument("--lens-images", type=int, default=6000)
    p.add_argument("--shard-mb", type=float, default=64, help="memory: shard size (default 64)")
    p.add_argument("--scratch", default=None, help="where the data goes (default: $TMPDIR)")
    args = p.parse_args()
    return memory(args) if args.what == "memory" else speed(args)


if __name__ == "__main__":
    sys.exit(main())
