"""The tf engine: TensorFlow's MultiWorkerMirroredStrategy, current TensorFlow and Keras 3.

One worker process per GPU (or per CPU share), as with Horovod.  Under SLURM the cluster comes
from TensorFlow's ``SlurmClusterResolver`` (ports derived from the job id, so two jobs on one
node do not collide); locally ``harness run --np N`` sets ``TF_CONFIG`` for each worker.
Gradients are all-reduced by the strategy inside Keras' compiled step (ring over gRPC on CPUs,
NCCL on GPUs); the harness's own control traffic (a stop flag, the run id, host names) uses the
strategy's collectives from Python, a few times per epoch.

Two places where Keras 3.15 does not work under a multi-worker strategy are absorbed here, so
that job files stay engine-neutral: see ``_keep_step_logs_local`` and ``prepare``.
"""
from __future__ import annotations

import os
import pickle

import keras
import numpy as np
import tensorflow as tf

from harness.engines import check_compiled_steps
from harness.runtime.collectives import time_allreduce
from slurm import preemption
from harness.runtime.cluster_env import ClusterEnvironment

_OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
    "adam": lambda lr: keras.optimizers.Adam(learning_rate=lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(learning_rate=lr),
    "adagrad": lambda lr: keras.optimizers.Adagrad(learning_rate=lr),
    "adadelta": lambda lr: keras.optimizers.Adadelta(learning_rate=lr),
}
PORT_BASE_ENV = "HARNESS_TF_PORT_BASE"


def slurm_port_base(job_id: str) -> int:
    """Each job's own ports (one per task on a node), the same on every task of the job."""
    return 20000 + (int(job_id) % 2000) * 16


def cluster_resolver(placement: ClusterEnvironment):
    """Who the workers are: SLURM's step, or TF_CONFIG (absent for a single local process)."""
    if placement.launcher == "srun":
        slurm = placement.slurm
        base = int(os.environ.get(PORT_BASE_ENV) or slurm_port_base(slurm.job_id))
        # The harness pins the GPU itself (local rank modulo visible GPUs): auto_set_gpu=False.
        # The resolver's GPU counts then only pace its address list; giving them keeps it from
        # running nvidia-smi, which CPU nodes do not have (one "GPU" per task, ntasks a bound).
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=base, auto_set_gpu=False, gpus_per_node=slurm.ntasks, gpus_per_task=1,
            rpc_layer="grpc")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _keep_step_logs_local() -> None:
    """Keras 3.15 under a multi-worker strategy reduces every step's logs with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on the scalar losses and metrics
    ("Invalid reduction dimension 0 for input with 0 dimensions").  Each worker keeps its own
    step logs instead, and ``EpochMetricAverage`` averages the epoch's logs over the workers,
    as Horovod's MetricAverageCallback does: no extra collective in the step."""
    from keras.src.backend.tensorflow import trainer as keras_trainer
    original = getattr(keras_trainer.reduce_per_replica, "harness_original",
                       keras_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and keras_trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, values)
        return original(values, strategy, reduction)

    reduce_per_replica.harness_original = original
    keras_trainer.reduce_per_replica = reduce_per_replica


class EpochMetricAverage(keras.callbacks.Callback):
    """The epoch's logs averaged over workers, so every later callback decides alike."""

    def __init__(self, engine: "TfEngine"):
        super().__init__()
        self.engine = engine

    def on_epoch_end(self, epoch, logs=None):
        keys = sorted(k for k, v in logs.items() if np.ndim(v) == 0)
        mine = np.array([float(logs[k]) for k in keys], dtype=np.float64)
        averaged = self.engine.allreduce_array(mine, tf.distribute.ReduceOp.MEAN)
        logs.update({k: float(v) for k, v in zip(keys, averaged)})


class TfEngine:
    name = "tf"
    checkpoint_kind = "arrays"  # npz of get_weights(): read and written by rank 0 alone

    def build_info(self) -> dict:
        return {}

    def join(self, pin_device, placement):
        resolver = cluster_resolver(placement)
        spec = resolver.cluster_spec().as_dict()
        rank = int(resolver.task_id or 0) if spec else 0
        # The resolver knows no nodes: the local placement is the launcher's.
        local_rank, local_size = placement.local_rank, placement.local_size
        device = pin_device(local_rank)  # before the strategy starts TensorFlow's runtime
        collectives = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver if spec else None, communication_options=collectives)
        # The strategy's coordination service installs its own SIGTERM handler in C++ (its
        # preemption notifier), which swallowed SLURM's preemption: the job trained on until
        # SIGKILL.  The harness's handler goes back, so both engines stop the same way.
        preemption.install(in_slurm_step=placement.under_slurm)
        _keep_step_logs_local()
        self.rank = rank
        return rank, self.strategy.num_replicas_in_sync, local_rank, local_size, device

    # --- collectives (every rank calls them in the same order)
    def _collective(self, fn, value):
        result = self.strategy.run(lambda: fn(tf.distribute.get_replica_context(), tf.constant(value)))
        return self.strategy.experimental_local_results(result)[0].numpy()

    def allreduce_array(self, values: np.ndarray, op) -> np.ndarray:
        return self._collective(lambda ctx, v: ctx.all_reduce(op, v), values)

    def allgather_rows(self, row: np.ndarray) -> np.ndarray:
        return self._collective(lambda ctx, v: ctx.all_gather(v, axis=0), row[None, ...])

    def allgather_object(self, obj):
        data = np.frombuffer(pickle.dumps(obj), np.uint8).astype(np.int32)
        longest = int(self.allgather_rows(np.array([len(data)], np.int32)).max())
        padded = np.zeros(longest, np.int32)
        padded[:len(data)] = data
        rows = self.allgather_rows(padded)
        return [pickle.loads(row.astype(np.uint8).tobytes()) for row in rows]

    def broadcast_object(self, obj, root=0):
        return self.allgather_object(obj if self.rank == root else None)[root]

    def agree_max(self, values):
        return self.allgather_rows(np.asarray(values, np.float64)).max(axis=0)

    def allreduce_mean(self, value):
        return float(self.allreduce_array(np.float64(value), tf.distribute.ReduceOp.MEAN))

    # --- model
    def scope(self):
        return self.strategy.scope()

    def optimizer(self, name, rate, fp16_allreduce, backward_passes_per_step=1):
        return _OPTIMIZERS[name](rate)

    def compile(self, model, optimizer, loss, metrics, steps_per_execution, jit_compile):
        # Measured with TensorFlow 2.21 / Keras 3.15 on 2 workers: several steps per call fail
        # ("You must feed a value for placeholder tensor 'while/body/.../Placeholder'" in
        # multi_step_on_iterator) and an XLA step aborts ("double free detected").
        check_compiled_steps(self.name, steps_per_execution, jit_compile,
                             self.strategy.num_replicas_in_sync)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                      steps_per_execution=steps_per_execution, jit_compile=jit_compile)

    def prepare(self, model, x_spec, y_spec):
        # Keras 3.15 builds the model in fit() by reducing the first (x, y) batch over the
        # workers with strategy.reduce, which takes one tensor, not a tuple, and fails.  Build
        # from the dataset's shapes here instead, then tell fit the build is done.
        with self.strategy.scope():
            model._symbolic_build(data_batch=(x_spec, y_spec))
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        model._maybe_symbolic_build = lambda *args, **kwargs: None

    def set_learning_rate(self, optimizer, rate):
        optimizer.learning_rate.assign(rate)

    def optimizer_variables(self, optimizer):
        return list(optimizer.variables)

    def start_equal(self, model):
        # Mirrored variables start equal (the strategy broadcasts initial values), and a resume
        # reads the same checkpoint on every rank.
        pass

    def sync_callbacks(self):
        # Mirrored variables start equal (the strategy broadcasts initial values); a resume
        # reads the same checkpoint on every rank.  Only the averaging is left to do.
        return [EpochMetricAverage(self)]

    def distribute(self, dataset, training: bool = False):
        options = tf.data.Options()  # the harness shards by rank itself
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        # The training set repeats and fit counts steps_per_epoch: Keras 3 keeps one iterator
        # across epochs instead of warning "ran out of data" at every epoch's end.
        dataset = (dataset.repeat() if training else dataset).with_options(options)
        # One replica per worker: each worker's batches go to its replica as they are.
        return self.strategy.distribute_datasets_from_function(lambda _: dataset)

    def fit_options(self, steps):
        return {"steps_per_epoch": steps}

    def chief_model(self, model, job):
        """A plain copy outside the strategy: rank 0 may predict and save with it alone."""
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        copy.compile(loss=job.LOSS, metrics=list(getattr(job, "METRICS", ())))
        return copy

    def start_timeline(self, path):
        pass  # the strategy's collectives show in TensorFlow's own trace

    def stop_timeline(self):
        pass

    def time_allreduce(self, nbytes, dtype="float32"):
        tensor = tf.ones([max(1, nbytes // tf.as_dtype(dtype).size)], dtype=dtype)
        reduce_op = tf.distribute.ReduceOp.SUM
        return time_allreduce(
            lambda: self._collective(lambda ctx, v: ctx.all_reduce(reduce_op, v), tensor),
            lambda: self.allreduce_array(np.zeros(1), reduce_op),
            lambda v: int(self.agree_max(np.array([v], np.float64))[0]))
