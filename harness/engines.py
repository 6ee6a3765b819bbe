"""The registry of training engines: what each one needs and how its processes are started.

Horovod (the lecture's engine) needs TensorFlow 2.15 and Keras 2; TensorFlow's own
MultiWorkerMirroredStrategy runs on current TensorFlow and Keras 3.  The two cannot share a
Python environment, so each has its own virtual environment in the checkout:
``make setup`` builds ``.venv`` (Horovod), ``make setup ENGINE=tf`` builds ``.venv-tf``.
Any ``harness`` command may start either: the processes of a job run with the Python of the
job's engine, found here without importing TensorFlow.

An engine is its runtime module (``harness/runtime/<x>_engine.py``, the collectives and the
distributed optimizer) plus one ``EngineInfo`` here: how its local processes join, how SLURM
starts them, what the batch script exports for it.  No other module branches on an engine's
name (tests/test_architecture.py keeps it so): they read these traits.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from harness.errors import UserError
from harness.files import REPO


@dataclass(frozen=True)
class EngineInfo:
    name: str
    venv: str  # the checkout's virtual environment for it
    setup: str  # the command that builds that environment
    runtime: str  # "module:Class" of its Engine (imports its framework)
    tensorflow: tuple  # (lowest, highest) TensorFlow (major, minor) it runs on, highest excluded
    requires: tuple = ()  # other distributions it needs (package metadata, no import)
    # How N local processes join: "horovodrun" (horovodrun --gloo starts and watches them) or
    # "tf_config" (the launcher starts each with its TF_CONFIG and watches them itself).
    local_join: str = "horovodrun"
    # Under SLURM: joins over MPI (the partition's srun --mpi=... or mpirun launch, and a build
    # with MPI), or a fixed srun line of its own.
    joins_over_mpi: bool = True
    srun: tuple = ()
    # Where its MPI-linked extension lies (package, glob): the build srun's MPI launch needs.
    mpi_extension: tuple = ()
    batch_env: dict = field(default_factory=dict)  # exported by the batch script before the step
    gradient_compression: bool = False  # training.fp16_allreduce
    horovod_knobs: bool = False  # communication.fusion_threshold_mb and the other Horovod settings
    # training.steps_per_execution > 1 and training.jit_compile with more than one process
    compiled_steps_multi_worker: bool = True
    profile_env: dict = field(default_factory=dict)  # set before the engine starts, to profile


ENGINES = {
    "horovod": EngineInfo(
        "horovod", ".venv", "make setup", "harness.runtime.hvd_engine:HorovodEngine",
        tensorflow=((2, 0), (2, 16)), requires=("horovod",), local_join="horovodrun",
        joins_over_mpi=True, gradient_compression=True, horovod_knobs=True,
        mpi_extension=("horovod", "tensorflow/mpi_lib*.so"),
        # Report stalls, and fail rather than hang when a rank is lost.
        batch_env={"HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
                   "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
                   "HOROVOD_GLOO_TIMEOUT_SECONDS": "120"},
        # The timeline can then be started and stopped mid-run (hvd.start_timeline).
        profile_env={"HOROVOD_TIMELINE": "DYNAMIC"}),
    # Joins over gRPC (SlurmClusterResolver reads srun's variables): no MPI plugin;
    # --kill-on-bad-exit stops every worker when one fails, instead of leaving them blocked in a
    # collective with a dead peer.
    "tf": EngineInfo(
        "tf", ".venv-tf", "make setup ENGINE=tf", "harness.runtime.tf_engine:TfEngine",
        tensorflow=((2, 16), (99, 0)), local_join="tf_config", joins_over_mpi=False,
        compiled_steps_multi_worker=False,
        srun=("srun", "--mpi=none", "--unbuffered", "--kill-on-bad-exit=1")),
}
DEFAULT = "horovod"


def info(engine: str) -> EngineInfo:
    try:
        return ENGINES[engine]
    except KeyError:
        raise UserError(f"training.engine={engine!r}: use one of {', '.join(ENGINES)}") from None


def check_compiled_steps(engine: str, steps_per_execution: int, jit_compile: bool,
                         processes: int) -> None:
    """Refuse before anything starts what an engine cannot run on ``processes`` workers."""
    if processes > 1 and (steps_per_execution > 1 or jit_compile) and \
            not info(engine).compiled_steps_multi_worker:
        raise UserError(
            f"training.steps_per_execution={steps_per_execution}, training.jit_compile="
            f"{str(jit_compile).lower()}: the {engine} engine cannot run them on {processes} "
            "processes (Keras 3's multi-step loop and XLA fail under "
            "MultiWorkerMirroredStrategy); use 1 and false, or training.engine=horovod")


def _version(*dists: str) -> Optional[tuple[int, ...]]:
    for dist in dists:
        try:
            return tuple(int(p) for p in metadata.version(dist).split(".")[:2])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def provided_here(engine: str) -> bool:
    """Whether the running Python can run ``engine`` (from package metadata: no imports)."""
    e = info(engine)
    tf = _version("tensorflow", "tensorflow-cpu")
    if tf is None or not e.tensorflow[0] <= tf < e.tensorflow[1]:
        return False
    return all(_version(dist) is not None for dist in e.requires)


def python_for(engine: str, repo: Path = REPO) -> str:
    """The Python that runs ``engine``'s processes: this one when it can, else the engine's venv."""
    if provided_here(engine):
        return sys.executable
    candidate = Path(venv_python(engine, repo))
    if candidate.exists():
        return str(candidate)
    raise UserError(f"training.engine={engine!r}: no environment for it here (looked in "
                    f"{candidate.parent.parent}); create it with `{info(engine).setup}`")


def mpi_linked(engine: str) -> bool:
    """Whether the engine's extension here was linked against MPI (a Gloo-only Horovod started
    by srun gives N separate jobs of size 1).  Read from the library's list of dependencies in
    milliseconds, where `horovodrun --check-build` imports every framework (20 s)."""
    import importlib.util
    package, pattern = info(engine).mpi_extension
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"{package}: not installed in this environment; run {info(engine).setup}")
    libs = sorted(Path(next(iter(found.submodule_search_locations))).glob(pattern))
    if not libs:
        raise UserError(f"{package}: built without TensorFlow support; run {info(engine).setup}")
    return b"libmpi.so" in libs[0].read_bytes()


def venv_python(engine: str, repo: Path) -> str:
    """Where a batch script finds the engine's Python on the cluster (the checkout's venv)."""
    return str(repo / info(engine).venv / "bin" / "python")
