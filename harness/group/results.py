"""A group's results on its parent run: one table (CSV) and the figures made from it.

A sweep and a scaling run analyse different things (the objective against each varied value;
throughput, speed-up and efficiency against N), and publish them the same way: the table and
its figures written to a scratch folder, then logged onto the parent run as artifacts, replacing
what an earlier summary logged there.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from harness.files import write_csv


def publish(uri: str, parent_run_id: str, rows: Sequence[Mapping], columns: Sequence[str],
            table_name: str, figures: Callable[[Path, Path], Sequence[Path]],
            artifact_folder: Optional[str] = None) -> list[str]:
    """Write ``rows`` as ``table_name`` (CSV), ``figures(folder, table)`` beside it, and log them
    all onto the parent run; the artifact paths."""
    from tracking.runs import RunStore
    store = RunStore(uri)
    with tempfile.TemporaryDirectory(prefix="harness-results-") as tmp:
        folder = Path(tmp)
        table = write_csv(rows, columns, folder / table_name)
        paths = [table, *figures(folder, table)]
        for path in paths:
            store.log_artifact(parent_run_id, path, artifact_folder)
    return [f"{artifact_folder}/{p.name}" if artifact_folder else p.name for p in paths]
