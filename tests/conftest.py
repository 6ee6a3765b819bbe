"""Shared fixtures: data files of the real schemas, a scratch working directory, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.files import REPO  # the checkout under test (installed editable)
SHARED_PIMA = REPO.parent / "shared" / "data" / "pima-indians-diabetes.csv"
HARNESS = [sys.executable, "-m", "harness.cli"]
PIMA_HEADER = "pregnancies,glucose,diastolic,triceps,insulin,bmi,dpf,age,diabetes"


def write_pima_like(path: Path, rows: int = 768, seed: int = 0) -> Path:
    """A CSV with the Pima schema; the label depends on glucose and bmi so it can be learnt."""
    rng = np.random.default_rng(seed)
    glucose = rng.normal(120, 30, rows).clip(40, 200)
    bmi = rng.normal(32, 7, rows).clip(15, 60)
    cols = [rng.integers(0, 12, rows), glucose, rng.normal(70, 12, rows), rng.normal(20, 15, rows),
            rng.normal(80, 100, rows).clip(0), bmi, rng.uniform(0.08, 2.4, rows),
            rng.integers(21, 80, rows)]
    label = ((glucose - 120) / 30 + (bmi - 32) / 7 + rng.normal(0, 0.7, rows) > 0.5).astype(int)
    table = np.column_stack(cols + [label])
    path.write_text(PIMA_HEADER + "\n" + "\n".join(",".join(f"{v:g}" for v in row) for row in table) + "\n")
    return path


@pytest.fixture(scope="session")
def pima_csv(tmp_path_factory) -> Path:
    """The real CSV where CI has it beside the clone, a generated one of the same schema otherwise."""
    if SHARED_PIMA.is_file():
        return SHARED_PIMA
    return write_pima_like(tmp_path_factory.mktemp("data") / "pima-like.csv")


@pytest.fixture(scope="session")
def mnist_npz(tmp_path_factory) -> Path:
    """A small file in Keras's mnist.npz format."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    make = lambda n: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),  # noqa: E731
                      rng.integers(0, 10, n, dtype=np.uint8))
    (xt, yt), (xv, yv) = make(512), make(128)
    np.savez(path, x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a scratch directory: checkpoints and the default mlflow.db land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The harness CLI in a subprocess, as a user runs it."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run([*HARNESS, *map(str, args)], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real mlflow server for the session's tracking tests."""
    from mlflow_server import MlflowServer
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node SLURM (munge, slurmctld, slurmd from Debian) for the session."""
    from slurm_dev import DevSlurm
    reason = None
    if os.geteuid() != 0:
        reason = "the dev SLURM needs root (slurmd starts jobs as their owner)"
    cluster = DevSlurm(Path(os.environ.get("HARNESS_SLURM_DEV", "/tmp/lars-slurm-dev")))
    if reason is None:
        try:
            cluster.start()
        except subprocess.CalledProcessError as e:
            reason = f"slurm/dev/start.sh failed: {(e.stderr or e.stdout or '').strip()[-300:]}"
    if reason:
        if os.environ.get("HARNESS_REQUIRE_ALL"):
            pytest.fail(f"SLURM is required in CI: {reason}")
        pytest.skip(reason)
    yield cluster
    cluster.stop()
