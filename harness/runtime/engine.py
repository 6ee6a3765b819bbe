"""What the training runtime asks of a data-parallel engine, and how to get one.

Two engines implement it: ``hvd_engine`` (Horovod, TensorFlow 2.15, Keras 2) and
``tf_engine`` (TensorFlow's MultiWorkerMirroredStrategy, current TensorFlow, Keras 3).
Everything else in the runtime -- sharding, learning-rate schedule, callbacks, checkpoints,
preemption agreement, telemetry, tracking -- is written once against this interface, so
both engines keep the same guarantees.

Collectives here are the harness's own control traffic (a flag, a run id, host names), a few
per epoch; gradients travel inside the engine's compiled step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol

import numpy as np

if TYPE_CHECKING:
    from harness.runtime.cluster_env import ClusterEnvironment


class Engine(Protocol):
    name: str
    checkpoint_kind: str  # "tf.train" (TensorFlow checkpoint files) or "arrays" (npz)

    # --- processes
    def join(self, pin_device: Callable[[int], str],
             placement: "ClusterEnvironment") -> tuple[int, int, int, int, str]:
        """Join the job its launcher started (``placement`` says which and where this process
        is): (rank, size, local_rank, local_size, device) as the engine itself sees them."""

    def allgather_object(self, obj: Any) -> list: ...
    def broadcast_object(self, obj: Any, root: int = 0) -> Any: ...
    def agree_max(self, values: np.ndarray) -> np.ndarray:
        """Element-wise maximum over all ranks; every rank gets the same array."""
    def allreduce_mean(self, value: float) -> float: ...

    # --- model
    def scope(self) -> ContextManager: ...
    def optimizer(self, name: str, rate: float, fp16_allreduce: bool,
                  backward_passes_per_step: int = 1): ...
    def compile(self, model, optimizer, loss: str, metrics: list, steps_per_execution: int,
                jit_compile: bool) -> None:
        """``model.compile``, with K steps per call and the step compiled by XLA where asked."""
    def prepare(self, model, x_sample, y_sample) -> None:
        """After compile: create every variable (optimizer slots too) before training."""
    def set_learning_rate(self, optimizer, rate: float) -> None: ...
    def optimizer_variables(self, optimizer) -> list: ...
    def start_equal(self, model) -> None:
        """Every rank's variables (optimizer slots too) set to rank 0's, once before training."""
    def sync_callbacks(self) -> list:
        """Callbacks that go first: metrics averaged over ranks (epoch hooks only)."""
    def distribute(self, dataset, training: bool = False): ...
    def fit_options(self, steps: int) -> dict: ...
    def chief_model(self, model, job):
        """A model rank 0 may use alone (predict, save) without waiting for the others."""

    # --- measurement
    def start_timeline(self, path: str) -> None:
        """The engine's own record of its collectives (Horovod's timeline), if it keeps one."""
    def stop_timeline(self) -> None: ...
    def time_allreduce(self, nbytes: int, dtype: str) -> float: ...
    def build_info(self) -> dict:
        """How the engine was built (controllers, NCCL), for `harness probe`; {} if nothing."""


def load(name: str) -> Engine:
    """The engine of that name, from the registry (imports its framework: call after the cheap
    checks)."""
    import importlib
    from harness.engines import info
    module, cls = info(name).runtime.split(":")
    return getattr(importlib.import_module(module), cls)()
