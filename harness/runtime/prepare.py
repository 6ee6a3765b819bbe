"""A job's ``prepare_data`` (a simulation, a download into a cache), once per launch, before any
rank starts: ranks started together would otherwise all fill the same cache at once.

``harness run``, local sweeps and local scaling call ``prepare_launch`` in the launching
process; a batch script runs ``python -m harness.runtime.prepare --manifest FILE`` on its first
node before the job step (an array task prepares its own point).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable

from harness.errors import exit_code_of
from harness.spec.jobs import resolve_job
from harness.spec.manifest import Manifest, Point
from slurm.environment import SlurmEnvironment


def prepare_points(points: Iterable[Point]) -> int:
    """Each distinct data section once; how many ``prepare_data`` calls that took."""
    done = []
    for point in points:
        verify_shards(point.spec.data)
        job = resolve_job(point.spec.job, Path(point.spec.spec_path).parent)
        if hasattr(job, "prepare_data") and point.spec.data not in done:
            started = time.monotonic()
            job.prepare_data(point.spec.data)
            done.append(point.spec.data)
            print(f"prepare: {point.spec.name} data ready in {time.monotonic() - started:.1f} s",
                  flush=True)
    return len(done)


def verify_shards(data) -> None:
    """A shard folder the job streams: every file there, whole, unchanged and with its records
    (exit 2 naming the file), before any rank starts.  Files verified before are not reread."""
    from harness.data import shards as fmt
    folder = getattr(data, "path", "")
    if not fmt.is_shard_folder(folder):
        return
    started = time.monotonic()
    shards = fmt.read(folder)
    read = fmt.verify(shards, cache=verified_cache())
    if read:
        print(f"prepare: {read} shard file(s) of {shards.folder} verified (SHA-256, record "
              f"counts) in {time.monotonic() - started:.1f} s", flush=True)


def verified_cache() -> Path:
    from tracking.store_template import cache_dir  # the harness's one cache folder
    return cache_dir() / "verified-shards.json"


def prepare_launch(launch: Manifest, index: int | None = None) -> int:
    """Every point of the launch, or only point ``index`` (an array task's own)."""
    return prepare_points(launch.points if index is None else [launch.point(index)])


def main(argv=None) -> int:
    from harness.spec import manifest as launch_manifest
    parser = argparse.ArgumentParser(prog="harness.runtime.prepare")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--index", type=int, default=None)
    args = parser.parse_args(argv)
    launch = launch_manifest.read(Path(args.manifest))
    task = SlurmEnvironment.from_env().array_task_id
    index = args.index if args.index is not None else int(task) if task and task.isdigit() else None
    prepare_launch(launch, index)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
