"""A new SQLite tracking store from a copy, not from MLflow's 60-odd schema migrations.

MLflow creates a new SQLite store by running every Alembic migration since its first schema:
4 s here, paid by the first run in every new folder (each test, each benchmark, a user's first
run), while every rank waits.  The migrated, empty schema is the same every time for one MLflow
version, so the harness builds it once per machine and version in its cache folder and copies it.
The template holds no experiment: MLflow adds its Default experiment on first open, with this
folder's artifact location, exactly as for a store it created itself.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path

SQLITE = "sqlite:///"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lars-harness"


def template_path() -> Path:
    return cache_dir() / f"mlflow-{metadata.version('mlflow')}-schema.db"


def ensure_template() -> Path:
    """Build the template now (make setup does, so no run pays for it)."""
    template = template_path()
    if not template.exists():
        build(template)
    return template


def seed(uri: str) -> None:
    """Before MLflow first opens ``uri``: a missing SQLite file becomes a copy of the template.
    Best effort: on any problem MLflow creates the store itself, as it always did."""
    if not uri.startswith(SQLITE):
        return
    target = Path(uri[len(SQLITE):])
    if target.exists() or not target.parent.is_dir():
        return
    try:
        _copy_if_absent(ensure_template(), target)
    except (OSError, sqlite3.Error, metadata.PackageNotFoundError):
        return


def build(template: Path) -> None:
    """MLflow's own initialisation of an empty store, minus its Default experiment."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as scratch:
        path = Path(scratch) / "schema.db"
        store = SqlAlchemyStore(f"{SQLITE}{path}", str(Path(scratch) / "artifacts"))
        store.engine.dispose()
        with sqlite3.connect(path) as con:
            con.execute("DELETE FROM experiment_tags")
            con.execute("DELETE FROM experiments")
        _copy_if_absent(path, template)


def _copy_if_absent(source: Path, target: Path) -> None:
    """Copy whole or not at all; a concurrent creator wins and its file is kept."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as if created here (mkstemp makes it private)
        os.link(tmp, target)  # fails if the target appeared meanwhile: then theirs stays
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
