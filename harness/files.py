"""The project's own files, and writing any file so that a crash never leaves half of it."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]  # the checkout: jobs/, slurm/, .venv/
JOBS = REPO / "jobs"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A shard folder's manifest (harness/data/shards.py); the spec loader knows a folder by it.
SHARD_MANIFEST = "shards.json"


def write_csv(rows: Sequence[Mapping], columns: Sequence[str], path: Path) -> Path:
    """A results table (a sweep's points, a scaling run's sizes, a forecast), one row per
    mapping, ``columns`` in that order (missing values empty), written atomically."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    atomic_write_text(Path(path), out.getvalue())
    return Path(path)
