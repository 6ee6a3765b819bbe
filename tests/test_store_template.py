"""A new SQLite store copied from the template behaves as one MLflow created itself."""
from __future__ import annotations

import os
import sqlite3

import pytest
from mlflow import MlflowClient

from tracking import store_template


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _schema(path) -> dict:
    """Every table, index and their clauses; the clauses' order is left out, since MLflow's
    own migrations write a table's constraints in a different order from one store to the next."""
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    return {(kind, name): sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())
            for kind, name, sql in rows}


def test_a_seeded_store_has_mlflows_own_schema_and_its_default_experiment_here(tmp_path, cache,
                                                                             monkeypatch):
    made_by_mlflow = tmp_path / "mlflow-made.db"
    MlflowClient(f"sqlite:///{made_by_mlflow}").search_experiments()
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)  # MLflow puts the Default experiment's artifacts under the cwd
    seeded = here / "mlflow.db"
    store_template.seed(f"sqlite:///{seeded}")
    assert list(cache.glob("lars-harness/mlflow-*-schema.db")) and seeded.is_file()
    assert _schema(seeded) == _schema(made_by_mlflow)
    assert oct(seeded.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    client = MlflowClient(f"sqlite:///{seeded}")
    default = client.get_experiment("0")
    assert default.name == "Default" and default.artifact_location == str(here / "mlruns" / "0")
    run = client.create_run(client.create_experiment("t")).info.run_id
    client.log_metric(run, "loss", 0.5, step=3)
    assert [(m.step, m.value) for m in client.get_metric_history(run, "loss")] == [(3, 0.5)]


def test_an_existing_store_or_another_scheme_is_left_alone(tmp_path, cache):
    existing = tmp_path / "mlflow.db"
    existing.write_bytes(b"not touched")
    store_template.seed(f"sqlite:///{existing}")
    store_template.seed("http://localhost:5000")
    assert existing.read_bytes() == b"not touched" and not cache.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
