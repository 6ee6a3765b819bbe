"""A sweep's points file: written once when the sweep starts, read by its summary and status.

``runs/<name>/sweeps/<sweep id>/points.json`` holds, for each point, its values, its checkpoint
folder and the MLflow child run it logs into, and where the sweep's launch manifest is (which
the tasks train from; harness/spec/manifest.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError
from harness.files import atomic_write_text

FILE_NAME = "points.json"


def write(folder: Path, record: dict) -> Path:
    path = folder / FILE_NAME
    atomic_write_text(path, json.dumps(record, indent=1))
    return path


def read(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
        record["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a sweep's points file ({type(e).__name__}: {e})") from None
    return record
