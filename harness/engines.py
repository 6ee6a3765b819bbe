"""The two training engines and the environment each one lives in.

Horovod (the lecture's engine) needs TensorFlow 2.15 and Keras 2; TensorFlow's own
MultiWorkerMirroredStrategy runs on current TensorFlow and Keras 3.  The two cannot share a
Python environment, so each has its own virtual environment in the checkout:
``make setup`` builds ``.venv`` (Horovod), ``make setup ENGINE=tf`` builds ``.venv-tf``.
Any ``harness`` command may start either: the processes of a job run with the Python of the
job's engine, found here without importing TensorFlow.
"""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from harness.errors import UserError
from harness.files import REPO

HOROVOD, TF = "horovod", "tf"
ENGINES = (HOROVOD, TF)
DEFAULT = HOROVOD
VENVS = {HOROVOD: ".venv", TF: ".venv-tf"}
SETUP = {HOROVOD: "make setup", TF: "make setup ENGINE=tf"}
FIRST_KERAS3_TF = (2, 16)  # TensorFlow 2.16 made Keras 3 its Keras


def _version(*dists: str) -> tuple[int, ...] | None:
    for dist in dists:
        try:
            return tuple(int(p) for p in metadata.version(dist).split(".")[:2])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def provided_here(engine: str) -> bool:
    """Whether the running Python can run ``engine`` (from package metadata: no imports)."""
    tf = _version("tensorflow", "tensorflow-cpu")
    if tf is None:
        return False
    if engine == HOROVOD:
        return tf < FIRST_KERAS3_TF and _version("horovod") is not None
    return tf >= FIRST_KERAS3_TF


def python_for(engine: str, repo: Path = REPO) -> str:
    """The Python that runs ``engine``'s processes: this one when it can, else the engine's venv."""
    if provided_here(engine):
        return sys.executable
    candidate = repo / VENVS[engine] / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    raise UserError(f"training.engine={engine!r}: no environment for it here (looked in "
                    f"{candidate.parent.parent}); create it with `{SETUP[engine]}`")


def venv_python(engine: str, repo: Path) -> str:
    """Where a batch script finds the engine's Python on the cluster (the checkout's venv)."""
    return str(repo / VENVS[engine] / "bin" / "python")
