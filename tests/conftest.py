"""Shared fixtures: data files of the real schemas, a scratch working directory, the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.files import REPO  # the checkout under test (installed editable)
SHIPPED_PIMA = REPO / "jobs" / "data" / "pima-indians-diabetes.csv"
HARNESS = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="session")
def pima_csv(tmp_path_factory) -> Path:
    """The real CSV, as the project ships it."""
    assert SHIPPED_PIMA.is_file(), f"{SHIPPED_PIMA} is part of the project; restore it from git"
    return SHIPPED_PIMA


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


ENGINES = ("horovod", "tf")

# The suite runs on two pytest-xdist workers (scripts/test.sh, --dist loadgroup).  Tests that
# share one thing that cannot be shared across processes run on one worker, in order: every SLURM
# test (one dev cluster at a time; the two-node one times its network) and every test of a module
# whose module-scoped fixture does real work (a sweep, a packed data set) that must happen once.
# The SLURM chain is the longest, so it is handed out first and the other worker takes the rest.
CLUSTER_FIXTURES = {"slurm", "two_nodes"}
SLURM_GROUP = "slurm"


def _worker_group(item) -> str | None:
    if CLUSTER_FIXTURES & set(item.fixturenames) or item.get_closest_marker("slurm"):
        return SLURM_GROUP
    defs = item._fixtureinfo.name2fixturedefs.values()
    if any(d[-1].scope == "module" for d in defs):
        return item.module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        groups[item] = _worker_group(item)
        if groups[item]:
            item.add_marker(pytest.mark.xdist_group(groups[item]))
    items.sort(key=lambda item: groups[item] != SLURM_GROUP)  # stable: file order otherwise


def _require_tf_engine() -> None:
    if not (REPO / ".venv-tf" / "bin" / "python").exists():
        reason = "no tf engine environment (.venv-tf): make setup ENGINE=tf"
        if os.environ.get("HARNESS_REQUIRE_ALL"):
            pytest.fail(f"both engines are required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each engine-specific test runs on both engines; the tf one needs `make setup ENGINE=tf`."""
    if request.param == "tf":
        _require_tf_engine()
    return request.param


@pytest.fixture
def tf_engine():
    """A test of the tf engine alone."""
    _require_tf_engine()
    return "tf"


def on_engine(engine: str) -> list:
    """The --set that puts a job on ``engine``."""
    return ["--set", f"training.engine={engine}"]


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
