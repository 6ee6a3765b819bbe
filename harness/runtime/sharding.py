"""Split the training set across ranks so that every sample is seen once per epoch.

Horovod needs every rank to take the same number of steps (each step is an
allreduce).  Shards differ in size by at most one sample, so each rank cuts
its shard into the same number of batches with ``np.array_split``: batch
sizes differ by at most one, no sample is dropped or repeated.
"""
from __future__ import annotations

import math

import numpy as np


def shard_indices(n_samples: int, rank: int, size: int) -> np.ndarray:
    """Indices of rank's shard: a contiguous block, sizes differing by at most one."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside 0..{size - 1}")
    return np.array_split(np.arange(n_samples), size)[rank]


def steps_per_epoch(n_samples: int, size: int, batch_size: int) -> int:
    """Steps every rank takes per epoch: enough for the largest shard."""
    largest = math.ceil(n_samples / size)
    return max(1, math.ceil(largest / batch_size))


def epoch_batches(shard: np.ndarray, steps: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shard reshuffled for this epoch and cut into exactly ``steps`` batches."""
    if len(shard) < steps:
        raise ValueError(f"shard of {len(shard)} samples cannot fill {steps} steps; "
                         "use a smaller batch or fewer processes")
    order = np.random.default_rng([seed, epoch]).permutation(shard)
    return np.array_split(order, steps)


def split_sizes(n: int, parts: int) -> np.ndarray:
    """Sizes of the pieces ``np.array_split`` makes of ``n`` items in ``parts``."""
    q, r = divmod(n, parts)
    return np.array([q + 1] * r + [q] * (parts - r), dtype=np.int64)


def global_batch_sizes(n_samples: int, size: int, steps: int) -> np.ndarray:
    """Samples processed per step summed over all ranks (for throughput)."""
    return sum(split_sizes(int(shard), steps) for shard in split_sizes(n_samples, size))
