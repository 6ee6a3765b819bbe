"""A sweep's points file: written once when the sweep is queued, read by every task.

``runs/<name>/sweeps/<sweep id>/points.json`` holds, for each point, its values, the frozen
spec it trains (``point-<i>.spec.yaml``, the values and its own checkpoint folder applied) and
the MLflow child run it logs into.  A SLURM array task finds its point by
``SLURM_ARRAY_TASK_ID``; a requeued task reads the same entry again, so it resumes the same
checkpoint into the same child run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

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


def point_of_task(path: Path, index: Optional[int] = None) -> dict:
    """The entry of array task ``index`` (default: this task's ``SLURM_ARRAY_TASK_ID``)."""
    if index is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "")
        if not task.isdigit():
            raise UserError(f"--sweep-points {path}: SLURM_ARRAY_TASK_ID={task!r}; a sweep's "
                            "points run as a SLURM job array (harness sweep submits it)")
        index = int(task)
    points = read(path)["points"]
    if not 0 <= index < len(points):
        raise UserError(f"--sweep-points {path}: task {index}, but the sweep has "
                        f"{len(points)} points (0..{len(points) - 1})")
    return points[index]
