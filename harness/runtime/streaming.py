"""Training from a shard folder: each rank streams its own whole files, never the whole set.

- **Which files.** The training files are dealt to the ranks once per run (largest first, each
  to the rank with the fewest samples so far, ties in a seeded order): whole files, balanced by
  sample count.  Every rank takes the same number of steps, ``S``, enough for the largest
  share; a rank with fewer samples makes its batches a little smaller, so every sample is seen
  once per epoch and none twice (as the in-memory path does with its shards).
- **In what order.** Epoch ``e`` reads the rank's files in an order drawn from ``(seed, rank,
  e)`` and shuffles records through a buffer seeded the same way.  Nothing else decides it:
  a run resumed at epoch ``e`` sees exactly the samples, in the order, that an uninterrupted
  run would.
- **How.** tf.data in C++ threads: parallel interleave over the files, parallel parse, the
  job's ``preprocess`` on whole batches, prefetch, each AUTOTUNEd.  Batches of exact sizes are
  cut by ``rebatch`` with the epoch's list of step sizes: records are batched in fixed blocks
  first, so no stage after the shuffle works record by record.
- **Validation and test** stream too: every rank reads the split's records and keeps every
  ``size``-th, so each record is evaluated once over all ranks however few files there are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from harness.data import shards as fmt
from harness.errors import UserError
from harness.runtime import sharding

AUTOTUNE = tf.data.AUTOTUNE
READ_BUFFER = 8 << 20  # bytes each open file reads ahead
VALIDATION_BATCH = 512
BLOCK = 256  # records batched together before they are cut into steps


@dataclass(frozen=True)
class RankShare:
    files: tuple  # this rank's training files (ShardFile)
    samples: int  # in them
    steps: int  # per epoch, the same on every rank
    per_step: np.ndarray  # samples per step summed over all ranks (for throughput)


def deal_files(files: Sequence[fmt.ShardFile], size: int, seed: int) -> list[list[fmt.ShardFile]]:
    """Whole files per rank, balanced by sample count (largest first, to the lightest rank)."""
    if len(files) < size:
        raise UserError(f"{len(files)} training shard file(s) for {size} ranks: every rank reads "
                        "whole files; pack with a smaller --shard-mb (at least one file per rank)")
    order = np.random.default_rng([seed, 0xDA7A]).permutation(len(files))
    ranked = sorted(order, key=lambda i: -files[i].samples)  # stable: ties keep the draw's order
    shares, loads = [[] for _ in range(size)], [0] * size
    for i in ranked:
        lightest = int(np.argmin(loads))
        shares[lightest].append(files[i])
        loads[lightest] += files[i].samples
    return shares


def rank_share(shards: fmt.ShardSet, rank: int, size: int, batch: int, seed: int) -> RankShare:
    dealt = deal_files(shards.split("train"), size, seed)
    loads = [sum(f.samples for f in share) for share in dealt]
    steps = max(1, math.ceil(max(loads) / batch))
    if min(loads) < steps:
        raise UserError(f"{shards.folder}: a rank's files hold {min(loads)} samples, fewer than "
                        f"the {steps} steps the largest share needs; use fewer ranks or pack "
                        "the training set into more, smaller files")
    per_step = sum(sharding.split_sizes(n, steps) for n in loads)
    return RankShare(tuple(dealt[rank]), loads[rank], steps, per_step)


def _parser(shards: fmt.ShardSet, with_ids: bool) -> Callable:
    features = {"x": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.string),
                "id": tf.io.FixedLenFeature([], tf.int64)}
    x_type, y_type = tf.as_dtype(shards.x.dtype), tf.as_dtype(shards.y.dtype)

    def parse(records):  # a batch of serialized records at once: one C++ call, not one per record
        parsed = tf.io.parse_example(records, features)
        x = tf.reshape(tf.io.decode_raw(parsed["x"], x_type), (-1, *shards.x.shape))
        y = tf.reshape(tf.io.decode_raw(parsed["y"], y_type), (-1, *shards.y.shape))
        return (x, y, parsed["id"]) if with_ids else (x, y)
    return parse


def training_dataset(shards: fmt.ShardSet, share: RankShare, rank: int, seed: int,
                     start_epoch: int, epochs: int, preprocess: Optional[Callable] = None,
                     shuffle_buffer: int = 10_000, with_ids: bool = False) -> tf.data.Dataset:
    """Epochs ``start_epoch`` .. ``epochs - 1`` of this rank's share, ``share.steps`` batches
    each, one dataset for the whole run (fit reads it with steps_per_epoch)."""
    names = [str(shards.folder / f.name) for f in share.files]
    orders = np.stack([np.random.default_rng([seed, rank, e]).permutation(len(names))
                       for e in range(epochs)]) if epochs else np.zeros((0, len(names)), int)
    table = tf.constant(np.asarray(names)[orders] if epochs else np.zeros((0, len(names)), str))
    parse = _parser(shards, with_ids)
    step_sizes = tf.constant(sharding.split_sizes(share.samples, share.steps), tf.int64)

    def epoch(e):
        files = tf.data.Dataset.from_tensor_slices(tf.gather(table, e))
        records = files.interleave(
            lambda path: tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER),
            cycle_length=max(1, min(len(names), 8)), num_parallel_calls=AUTOTUNE, deterministic=True)
        records = records.shuffle(shuffle_buffer, seed=seed * 1_000_003 + rank * 10_007 + e,
                                  reshuffle_each_iteration=False)
        # One epoch is exactly share.samples records, so the sizes are cycled through once.
        return records.batch(BLOCK).rebatch(step_sizes)

    batches = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch)
    batches = batches.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if preprocess is not None:
        batches = batches.map(_preprocessed(preprocess, with_ids), num_parallel_calls=AUTOTUNE,
                              deterministic=True)
    return batches.prefetch(AUTOTUNE)


def _preprocessed(preprocess: Callable, with_ids: bool) -> Callable:
    if with_ids:
        return lambda x, y, ids: (*preprocess(x, y), ids)
    return preprocess


def evaluation_dataset(shards: fmt.ShardSet, split: str, rank: int, size: int,
                       preprocess: Optional[Callable] = None,
                       ordered: bool = False) -> tf.data.Dataset:
    """This rank's every ``size``-th record of ``split``, in batches, for validation or test;
    ``ordered``: in sample order (one file after another), for facts kept per sample."""
    names = [str(shards.folder / f.name) for f in shards.split(split)]
    records = tf.data.TFRecordDataset(names, buffer_size=READ_BUFFER, num_parallel_reads=(
        None if ordered else min(len(names), 4) or None))
    batches = records.shard(size, rank).batch(VALIDATION_BATCH).map(
        _parser(shards, False), num_parallel_calls=AUTOTUNE)
    if preprocess is not None:
        batches = batches.map(preprocess, num_parallel_calls=AUTOTUNE)
    # Its length stated (the manifest counts the records): Keras needs it to run several
    # validation steps per call (training.steps_per_execution).
    mine = len(range(rank, shards.samples(split), size))
    return batches.apply(tf.data.experimental.assert_cardinality(
        -(-mine // VALIDATION_BATCH))).prefetch(AUTOTUNE)


def validation_split(shards: fmt.ShardSet) -> str:
    """``val`` when the folder has one; else ``test`` (the lecture's MNIST validates on its test
    set, as Keras' mnist.npz has no other)."""
    if "val" in shards.splits:
        return "val"
    if "test" in shards.splits:
        return "test"
    raise UserError(f"{shards.folder}: no val or test split to validate on; pack a source with "
                    "x_val/y_val or x_test/y_test")
