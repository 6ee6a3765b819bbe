"""What a rank trains and validates on: the job's arrays in memory, or a shard folder streamed.

A job whose ``data.path`` names a shard folder (``harness data pack``) is streamed
(harness/runtime/streaming.py): no rank ever holds the set, each reads its own whole files.
Otherwise the job's ``load_data`` gives the arrays and each rank cuts its shard from them (small
data such as the diabetes CSV).  Either way the trainer sees the same ``Inputs``: a training
dataset of ``steps`` batches per epoch on every rank, a validation dataset, and how to describe
the data to MLflow.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass, field
from types import ModuleType
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from harness.data import shards as fmt
from harness.data.pack import TEST_INFO
from harness.errors import RunFailed
from harness.runtime import sharding
from harness.runtime.distributed import ProcessContext
from harness.spec.jobs import Splits
from harness.spec.schema import JobSpec, TrainingSpec


@dataclass
class Inputs:
    train: tf.data.Dataset
    steps: int  # per epoch, on every rank
    per_step: np.ndarray  # samples per step over all ranks
    validation: tf.data.Dataset
    splits: Optional[Splits] = None  # the arrays (in memory)
    shards: Optional[fmt.ShardSet] = None  # the shard folder (streamed)
    rank_files: tuple = ()  # this rank's training files (streamed)
    fit_options: dict = field(default_factory=dict)
    preprocess: object = None
    wait: Optional["InputWait"] = None  # when the input is a pipeline (not made on the device)
    test_info: Optional[Path] = None  # the packed test samples' facts (streamed)

    @property
    def element_specs(self) -> tuple:
        return tuple(self.train.element_spec)

    def describe(self, tracker, spec: JobSpec) -> None:
        """MLflow's dataset input: the arrays' digest and shape, or the manifest's facts."""
        name = f"{spec.name}-train"
        if self.shards is None:
            tracker.log_dataset(name, self.splits.x_train, self.splits.y_train,
                                {"job": spec.job, "spec": spec.spec_path}, "training")
            return
        s = self.shards
        tracker.log_dataset_description(
            name, s.digest, {"shards": str(s.folder), **s.source},
            {"num_samples": s.samples("train"), "files": len(s.split("train")),
             "bytes": sum(f.bytes for f in s.split("train")),
             **{f"{split}_samples": s.samples(split) for split in s.splits}},
            {"x": {"shape": list(s.x.shape), "dtype": s.x.dtype},
             "y": {"shape": list(s.y.shape), "dtype": s.y.dtype}}, "training")

    def check_fits(self, model, spec: JobSpec) -> None:
        """Samples that do not fit the model are refused before the first step (exit 2)."""
        if self.shards is not None:
            fmt.check_sample_shape(self.shards, tuple(model.input_shape), f"{spec.name}'s model")

    @contextlib.contextmanager
    def reading(self):
        """A record that fails to decode mid-epoch fails the run naming its file."""
        if self.shards is None:
            yield
            return
        try:
            yield
        except tf.errors.DataLossError as e:
            raise RunFailed(f"{corrupt_file(self.rank_files, self.shards) or self.shards.folder}: "
                            f"a record fails to decode ({e.message.splitlines()[0]}); the last "
                            "checkpoint is kept; repack the file or restore it") from None

    def held_out(self) -> Splits:
        """The arrays the job's ``evaluate`` reads; streamed, the test split is read here once
        (rank 0, after training), the validation split when there is no test split."""
        if self.shards is None:
            return self.splits
        from harness.runtime import streaming
        split = "test" if "test" in self.shards.splits else streaming.validation_split(self.shards)
        xs, ys = [], []
        for x, y in streaming.evaluation_dataset(self.shards, split, 0, 1, self.preprocess,
                                                 ordered=True):
            xs.append(x.numpy())
            ys.append(y.numpy())
        x, y = np.concatenate(xs), np.concatenate(ys)
        info = None
        if split == "test" and self.test_info is not None and self.test_info.exists():
            with np.load(self.test_info) as f:  # in sample order, as the split is read here
                info = {k: f[k] for k in f.files}
        return Splits(x[:0], y[:0], x[:0], y[:0], x, y, test_info=info)


def corrupt_file(files, shards: fmt.ShardSet) -> Optional[str]:
    """The first of ``files`` whose records do not all decode (read again, one at a time)."""
    for f in files:
        path = str(shards.folder / f.name)
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError:
            return path
    return None


@contextlib.contextmanager
def for_job(job: ModuleType, spec: JobSpec, ctx: ProcessContext,
            start_epoch: int) -> Iterator[Inputs]:
    """The job's inputs for the ``with`` block (which trains and evaluates): streamed from its
    shard folder, staged on each node first when ``data.stage`` says so, or its arrays."""
    folder = getattr(spec.data, "path", "")
    if not fmt.is_shard_folder(folder):
        yield _waited(job, in_memory(job, spec, ctx, start_epoch))
        return
    shards = fmt.read(folder)
    if ctx.is_chief:  # every file there with its size: a short read would end an epoch early
        from harness.runtime.streaming import validation_split
        fmt.check(shards, splits=["train", validation_split(shards)])
    with staged(shards, spec, ctx) as shards:
        yield _waited(job, streamed(job, spec, ctx, start_epoch, shards))


def _waited(job: ModuleType, data: Inputs) -> Inputs:
    """The input wait clock on any pipeline (data made on the device has none)."""
    if not hasattr(job, "device_batches"):
        data.wait = InputWait()
        data.train = data.wait.stamp(data.train)
    return data


def staged(shards: fmt.ShardSet, spec: JobSpec, ctx: ProcessContext):
    """The shard set read in place, or from each node's local copy (``data.stage: node-local``)."""
    if getattr(spec.data, "stage", "none") != "node-local":
        return contextlib.nullcontext(shards)
    from harness.runtime import staging, streaming
    t = spec.training
    validate_on = streaming.validation_split(shards)
    held_out = ["test"] if "test" in shards.splits and validate_on != "test" else []
    return staging.node_local(
        shards, lambda rank: streaming.rank_share(shards, rank, ctx.size, t.batch_size, t.seed).files,
        ctx, every_node=[validate_on], chief_node=held_out)


def streamed(job: ModuleType, spec: JobSpec, ctx: ProcessContext, start_epoch: int,
             shards: fmt.ShardSet) -> Inputs:
    from harness.runtime import streaming
    t = spec.training
    validate_on = streaming.validation_split(shards)
    share = streaming.rank_share(shards, ctx.rank, ctx.size, t.batch_size, t.seed)
    preprocess = getattr(job, "preprocess", None)
    train = streaming.training_dataset(shards, share, ctx.rank, t.seed, start_epoch, t.epochs,
                                       preprocess)
    validation = streaming.evaluation_dataset(shards, validate_on, ctx.rank, ctx.size, preprocess)
    if ctx.is_chief:
        print(f"data: streaming {shards.samples('train')} samples from {len(shards.split('train'))} "
              f"file(s) in {shards.folder}; this rank reads {len(share.files)} file(s), "
              f"{share.samples} samples; validating on {validate_on}", flush=True)
    # One dataset for the whole run: fit counts each epoch's steps (every engine).
    return Inputs(train, share.steps, share.per_step, validation, shards=shards,
                  rank_files=share.files, fit_options={"steps_per_epoch": share.steps},
                  preprocess=preprocess,
                  # from the folder packed, not a node-local copy (which holds only the shards)
                  test_info=Path(spec.data.path) / f"{TEST_INFO}.npz")


def in_memory(job: ModuleType, spec: JobSpec, ctx: ProcessContext, start_epoch: int) -> Inputs:
    splits: Splits = job.load_data(spec.data, spec.training.seed)
    n_train, batch = len(splits.x_train), spec.training.batch_size
    # One dataset for the whole run, repeated, and fit counts each epoch's steps: Keras needs
    # the count to run several steps per call (training.steps_per_execution).
    if hasattr(job, "device_batches"):  # synthetic data made on the device: no input pipeline
        steps = sharding.steps_per_epoch(n_train, ctx.size, batch)
        train = job.device_batches(spec.data, batch, steps, spec.training.seed + ctx.rank)
        validation = job.device_batches(spec.data, batch, 2, spec.training.seed + 10_000)
        return Inputs(train.repeat(), steps, np.full(steps, batch * ctx.size), validation, splits,
                      fit_options={"steps_per_epoch": steps})
    train, steps = shard_dataset(splits.x_train, splits.y_train, ctx, spec.training, start_epoch)
    idx = sharding.shard_indices(len(splits.x_val), ctx.rank, ctx.size)
    validation = tf.data.Dataset.from_tensor_slices((splits.x_val[idx], splits.y_val[idx])).batch(512)
    return Inputs(train.repeat(), steps, sharding.global_batch_sizes(n_train, ctx.size, steps),
                  validation, splits, fit_options={"steps_per_epoch": steps})


IN_GRAPH_MAX_BYTES = 1 << 30  # arrays a pipeline may hold as tensors (a 2 GB graph limit lies near)


def shard_dataset(x: np.ndarray, y: np.ndarray, ctx: ProcessContext, training: TrainingSpec,
                  start_epoch: int) -> tuple[tf.data.Dataset, int]:
    """This rank's shard, reshuffled each epoch, in exactly the same number of steps as every rank.

    Python draws each epoch's order once (``sharding.epoch_batches``, so the batches are the
    same however they are read); the batches are gathered by tf.data's own threads, in
    parallel and ahead of the step, as ``from_tensor_slices().batch()`` would.  Arrays too large
    to hold in a pipeline's graph are gathered by a Python generator instead (one thread)."""
    shard = sharding.shard_indices(len(x), ctx.rank, ctx.size)
    steps = sharding.steps_per_epoch(len(x), ctx.size, training.batch_size)
    epoch = [start_epoch]

    def epoch_batches() -> list[np.ndarray]:
        # Called once per epoch: Keras iterates the finite dataset anew each epoch (the tf
        # engine repeats it), so the pipeline counts the epochs itself.
        batches = sharding.epoch_batches(shard, steps, training.seed + ctx.rank, epoch[0])
        epoch[0] += 1
        return batches

    if x.nbytes + y.nbytes > IN_GRAPH_MAX_BYTES:
        return _generated(x, y, epoch_batches), steps
    return _gathered(x, y, epoch_batches), steps


def _gathered(x: np.ndarray, y: np.ndarray, epoch_batches) -> tf.data.Dataset:
    def orders():
        batches = epoch_batches()
        yield np.concatenate(batches), np.cumsum([0] + [len(b) for b in batches])

    def cut(order, bounds):  # one epoch's order -> its batches of indices
        return tf.data.Dataset.range(tf.size(bounds, tf.int64) - 1).map(
            lambda i: order[bounds[i]:bounds[i + 1]])

    xs, ys = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    index = tf.TensorSpec([None], tf.int64)
    return (tf.data.Dataset.from_generator(orders, output_signature=(index, index))
            .flat_map(cut)
            .map(lambda idx: (tf.gather(xs, idx), tf.gather(ys, idx)),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _generated(x: np.ndarray, y: np.ndarray, epoch_batches) -> tf.data.Dataset:
    def batches():
        for idx in epoch_batches():
            yield x[idx], y[idx]

    signature = (tf.TensorSpec((None,) + x.shape[1:], tf.as_dtype(x.dtype)),
                 tf.TensorSpec((None,) + y.shape[1:], tf.as_dtype(y.dtype)))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


class InputWait:
    """How long each step waited for its batch: the time the pipeline handed the batch over
    (stamped by the last stage, which runs when the step asks) minus the time the step began.
    A fraction of the epoch near 0 means the input keeps up; above 10% the GPUs starve."""

    def __init__(self):
        self.delivered: list[float] = []

    def stamp(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        import time

        def delivered():
            self.delivered.append(time.perf_counter())
            return np.int64(0)

        def passed_on(*batch):
            # numpy_function, not py_function: no eager tensors made and no eager context
            # entered, about 0.1 ms a step instead of 0.2 ms, on every step's critical path
            # (benches/input_stamp.py, on the lens CNN's input; docs/benchmarks.md)
            token = tf.numpy_function(delivered, [], tf.int64, stateful=True)
            with tf.control_dependencies([token]):
                return tuple(tf.identity(t) for t in batch)
        return dataset.map(passed_on)  # after the prefetch: runs in the step's own request
