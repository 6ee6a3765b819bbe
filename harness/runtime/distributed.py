"""Per-process start-up: join Horovod, check SLURM agrees, pin a device, seed everything."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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


def init_process(seed: int) -> ProcessContext:
    """hvd.init(), SLURM cross-check, device pinning and seeding, in that order."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    tf.get_logger().setLevel("ERROR")  # Keras's "callback is slow" warning fires on the broadcast step
    slurm = SlurmEnvironment.from_env()
    slurm.cross_check(hvd.size(), hvd.local_rank())
    device = _pin_device(hvd.local_rank())
    # Same seed on every rank: identical initial weights even before the broadcast.
    tf.keras.utils.set_random_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    hosts = tuple(sorted(set(hvd.allgather_object(socket.gethostname()))))
    return ProcessContext(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                          local_size=hvd.local_size(), device=device, slurm=slurm, hosts=hosts)


def trainable_fingerprints(model) -> list[str]:
    """SHA-1 of the trainable weights on every rank (rank order).

    Data-parallel training must keep them bit-identical; a difference means
    a rank missed a broadcast or an allreduce.  (Batch-norm statistics are
    not trainable and legitimately differ per rank.)
    """
    import hashlib

    import horovod.tensorflow as hvd
    digest = hashlib.sha1(b"".join(w.numpy().tobytes() for w in model.trainable_weights))
    return list(hvd.allgather_object(digest.hexdigest()))
