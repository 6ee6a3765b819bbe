"""Per-process start-up: join the engine's job, check the launcher agrees, pin a device, seed
everything."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.engines import DEFAULT as DEFAULT_ENGINE
from harness.runtime.engine import Engine, load
from harness.runtime.cluster_env import ClusterEnvironment
from slurm.environment import SlurmEnvironment


@dataclass(frozen=True)
class ProcessContext:
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: str  # "GPU ..." or "CPU"
    slurm: SlurmEnvironment
    hosts: tuple = ()  # every process's host name, deduplicated
    engine: Any = None  # the Engine every collective goes through

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _pin_device(local_rank: int) -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        # local_rank % len(gpus): with --gpus-per-task=1 each task sees one GPU.
        gpu = gpus[local_rank % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
        return f"GPU {gpu.name}"
    # On the CPU, processes share the cores: one thread each (intra- and inter-op) avoids
    # oversubscription and makes N processes compare with 1 fairly in `harness scale`.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return "CPU"


def init_process(seed: int, engine_name: str = DEFAULT_ENGINE) -> ProcessContext:
    """Join the job, SLURM cross-check, device pinning and seeding, in that order."""
    import tensorflow as tf

    engine: Engine = load(engine_name)
    placement = ClusterEnvironment.detect()
    rank, size, local_rank, local_size, device = engine.join(_pin_device, placement)
    tf.get_logger().setLevel("ERROR")  # Keras's "callback is slow" warning fires on the broadcast step
    placement.cross_check(rank, size, local_rank)
    # Same seed on every rank: identical initial weights even before the broadcast.
    tf.keras.utils.set_random_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    hosts = tuple(sorted(set(engine.allgather_object(socket.gethostname()))))
    return ProcessContext(rank=rank, size=size, local_rank=local_rank, local_size=local_size,
                          device=device, slurm=placement.slurm, hosts=hosts, engine=engine)


def trainable_fingerprints(model, engine: Engine) -> list[str]:
    """SHA-1 of the trainable weights on every rank (rank order).

    Data-parallel training must keep them bit-identical; a difference means
    a rank missed a broadcast or an allreduce.  (Batch-norm statistics are
    not trainable and legitimately differ per rank.)
    """
    import hashlib

    digest = hashlib.sha1(b"".join(np.asarray(w.numpy()).tobytes() for w in model.trainable_weights))
    return engine.allgather_object(digest.hexdigest())
