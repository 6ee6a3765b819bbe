"""``harness tracking backup / restore / import``: a store and its artifacts, copied whole.

A backup is taken while the server runs: SQLite's online backup API (a consistent snapshot
even while another process writes) or ``pg_dump`` (one transaction), then the artifact folder.
The database goes first: an artifact is written after its run exists, so every artifact the
snapshot's runs name is already on disk when the folder is copied.  The backup is written under
``DEST.partial`` and renamed when complete, so a failed backup never looks like a good one.

``import`` moves an SQLite store into PostgreSQL table by table, keeping every id (run ids,
experiment ids, artifact locations, parent links), so links and scripts that name a run still
work.  Both stores must be at the schema this MLflow writes.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Optional

from harness.errors import UserError
from tracking import postgres

SQLITE_FILE, PG_DUMP, AUTH_FILE, ARTIFACTS, MANIFEST = ("mlflow.db", "mlflow.pgdump",
                                                        "basic_auth.db", "artifacts", "backup.json")
ADMIN_FILE = "admin-credentials"  # the user database is useless without its administrator
CHUNK_ROWS = 5000


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def sqlite_snapshot(src: Path, dest: Path) -> None:
    """SQLite's online backup: consistent while the server writes."""
    source, target = sqlite3.connect(f"file:{src}?mode=ro", uri=True), sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def count_runs(uri: str) -> int:
    import sqlalchemy as sa
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() if "runs" in names else 0
    finally:
        engine.dispose()


def _copy_artifacts(src: Path, dest: Path) -> int:
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    return sum(1 for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else 0


def backup(dest: Path, backend: str, artifacts: Path, home: Path) -> dict:
    """Copy the store at ``backend``, the user database in ``home`` and ``artifacts`` to ``dest``."""
    if dest.exists():
        raise UserError(f"{dest}: exists; give a new folder for the backup")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    os.chmod(partial, 0o700)  # it holds the user database and the administrator's password
    try:
        if backend.startswith("sqlite:///"):
            if not _sqlite_path(backend).is_file():
                raise UserError(f"{_sqlite_path(backend)}: no tracking database there")
            sqlite_snapshot(_sqlite_path(backend), partial / SQLITE_FILE)
        elif backend.startswith("postgresql"):
            postgres.run_tool([postgres.tool("pg_dump"), "-Fc", "-f", str(partial / PG_DUMP),
                               "-d", postgres.libpq_uri(backend)], "pg_dump")
        else:
            raise UserError(f"--backend {backend}: backups cover sqlite:/// and postgresql:// stores")
        if (home / AUTH_FILE).is_file():
            sqlite_snapshot(home / AUTH_FILE, partial / AUTH_FILE)
            shutil.copy2(home / ADMIN_FILE, partial / ADMIN_FILE)
        facts = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "store": backend.split(":")[0],
                 "runs": count_runs(backend), "artifact_files": _copy_artifacts(artifacts,
                                                                                partial / ARTIFACTS),
                 "mlflow": _mlflow_version()}
        (partial / MANIFEST).write_text(json.dumps(facts, indent=1))
        partial.rename(dest)
        return facts
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def restore(src: Path, backend: str, artifacts: Path, home: Path) -> dict:
    """A backup into an empty store (and its artifacts beside it); the backup's manifest."""
    manifest = src / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{src}: not a backup (no {MANIFEST}); give the folder "
                        "harness tracking backup wrote")
    if count_runs_or_zero(backend):
        raise UserError(f"{backend}: already holds runs; restore into an empty store")
    if (src / PG_DUMP).is_file():
        if not backend.startswith("postgresql"):
            raise UserError(f"{src}: a PostgreSQL backup; restore it with --store postgres or a "
                            "postgresql:// --backend")
        postgres.run_tool([postgres.tool("pg_restore"), "--no-owner", "--exit-on-error", "-d",
                           postgres.libpq_uri(backend), str(src / PG_DUMP)], "pg_restore")
    elif backend.startswith("sqlite:///"):
        target = _sqlite_path(backend)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # empty (checked above): MLflow may have made its tables
        sqlite_snapshot(src / SQLITE_FILE, target)
    else:
        import_store(src / SQLITE_FILE, backend)
    if (src / AUTH_FILE).is_file():
        home.mkdir(parents=True, exist_ok=True)
        sqlite_snapshot(src / AUTH_FILE, home / AUTH_FILE)
        shutil.copy2(src / ADMIN_FILE, home / ADMIN_FILE)
    _copy_artifacts(src / ARTIFACTS, artifacts)
    return json.loads(manifest.read_text())


def count_runs_or_zero(uri: str) -> int:
    if uri.startswith("sqlite:///") and not _sqlite_path(uri).is_file():
        return 0
    return count_runs(uri)


def is_sqlite_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def import_store(src: Path, target: str, say=print) -> int:
    """Every table of the SQLite store ``src`` into the empty store ``target``; runs copied."""
    import sqlalchemy as sa
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    source_uri = f"sqlite:///{src}"
    if count_runs_or_zero(target):
        raise UserError(f"{target}: already holds runs; import into an empty store")
    SqlAlchemyStore(target, str(src.parent / "mlartifacts"))  # MLflow's schema, migrated
    source, dest = sa.create_engine(source_uri), sa.create_engine(target)
    try:
        _same_schema(source, dest, src)
        tables = sa.MetaData()
        tables.reflect(dest)
        ordered = [t for t in tables.sorted_tables if t.name != "alembic_version"]
        with source.connect() as read, dest.begin() as write:
            for table in reversed(ordered):  # MLflow's own first rows (the Default experiment)
                write.execute(table.delete())
            for table in ordered:
                copied = _copy_table(read, write, table)
                if copied:
                    say(f"import: {table.name}: {copied} rows")
            if dest.dialect.name == "postgresql":
                _advance_sequences(write, ordered)
        return count_runs(target)
    finally:
        source.dispose()
        dest.dispose()


def _same_schema(source, dest, src: Path) -> None:
    import sqlalchemy as sa
    versions = []
    for engine in (source, dest):
        with engine.connect() as conn:
            versions.append(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar())
    if versions[0] != versions[1]:
        raise UserError(f"{src}: schema {versions[0]}, this MLflow writes {versions[1]}; "
                        f"upgrade it first: mlflow db upgrade sqlite:///{src}")


def _copy_table(read, write, table) -> int:
    import sqlalchemy as sa
    if not sa.inspect(read).has_table(table.name):
        return 0
    source_columns = {c["name"] for c in sa.inspect(read).get_columns(table.name)}
    columns = [c for c in table.columns if c.name in source_columns]
    booleans = {c.name for c in columns if isinstance(c.type, sa.Boolean)}  # 0/1 in SQLite
    query = sa.text(f'SELECT {", ".join(chr(34) + c.name + chr(34) for c in columns)} '
                    f'FROM "{table.name}"')
    copied = 0
    result = read.execution_options(stream_results=True).execute(query)
    while rows := result.fetchmany(CHUNK_ROWS):
        batch = [{c.name: (bool(v) if c.name in booleans and v is not None else v)
                  for c, v in zip(columns, row)} for row in rows]
        write.execute(table.insert(), batch)
        copied += len(batch)
    return copied


def _advance_sequences(write, tables) -> None:
    """PostgreSQL's id counters past the copied ids (inserting explicit ids does not move them)."""
    import sqlalchemy as sa
    for table in tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, sa.Integer):
                continue
            sequence = write.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                                     {"t": table.name, "c": column.name}).scalar()
            if sequence:
                write.execute(sa.text(
                    f'SELECT setval(:s, COALESCE((SELECT max("{column.name}") FROM "{table.name}"), 0) + 1, false)'),
                    {"s": sequence})


def _mlflow_version() -> str:
    from importlib.metadata import version
    return version("mlflow")


def describe(facts: dict, where: Optional[Path] = None) -> str:
    return (f"{facts['runs']} runs ({facts['store']} store), {facts['artifact_files']} artifact "
            f"files{f' in {where}' if where else ''}")
