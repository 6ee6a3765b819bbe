"""The spec as submitted: a SLURM job, and every requeue of it, runs what was submitted.

A user may edit the YAML or the job file while the job waits in the queue or between two
requeues; submitit pickles the callable at submit time for this reason.  ``harness submit``
writes, beside the batch script:

``<stem>.spec.yaml``
    the fully resolved spec (defaults, ``--set`` overrides and absolute data paths included),
    whose ``job:`` names the copy below;
``<stem>.job.py``
    a copy of the job file (modules it imports are still read at run time);
``<stem>.submitted.json``
    where both came from and the job file's SHA-256, so the job can say when the original has
    changed since (``drift``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import yaml

from harness.files import atomic_write_text
from harness.spec.jobs import job_source
from harness.spec.schema import JobSpec, describe

SPEC_SUFFIX, JOB_SUFFIX, RECORD_SUFFIX = ".spec.yaml", ".job.py", ".submitted.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def frozen_paths(folder: Path, stem: str) -> tuple[Path, Path, Path]:
    """(spec, job copy, record) for a submission's stem."""
    return folder / f"{stem}{SPEC_SUFFIX}", folder / f"{stem}{JOB_SUFFIX}", folder / f"{stem}{RECORD_SUFFIX}"


def freeze(spec: JobSpec, folder: Path, stem: str) -> Path:
    """Write the resolved spec, the job copy and the record; return the spec's path."""
    spec_path, job_copy, record = frozen_paths(folder, stem)
    source = job_source(spec)
    atomic_write_text(job_copy, source.read_text())
    resolved = describe(dataclasses.replace(spec, job=job_copy.name))
    resolved.pop("spec_path")
    header = (f"# Frozen by `harness submit` from {spec.spec_path} at {time.strftime('%Y-%m-%d %H:%M:%S')}.\n"
              "# The job and its requeues run this; edit the original and submit again instead.\n")
    atomic_write_text(spec_path, header + yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_text(record, json.dumps({"spec": spec.spec_path, "job": str(source),
                                          "job_sha256": sha256(source)}, indent=1))
    return spec_path


def discard(folder: Path, stem: str) -> None:
    """Remove a submission's frozen files (SLURM refused the job: nothing half-written stays)."""
    for path in frozen_paths(folder, stem):
        path.unlink(missing_ok=True)


def submitted_record(spec: JobSpec) -> Optional[dict]:
    """The record beside a frozen spec, None for a spec that was not frozen (``harness run``)."""
    path = Path(spec.spec_path)
    if not path.name.endswith(SPEC_SUFFIX):
        return None
    record = path.with_name(path.name[: -len(SPEC_SUFFIX)] + RECORD_SUFFIX)
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def provenance(spec: JobSpec) -> tuple[dict, Optional[str]]:
    """Run tags about the job file, and a line to print when it changed after submission."""
    record = submitted_record(spec)
    if record is None:
        return {"harness.job_sha256": sha256(job_source(spec))}, None
    tags = {"harness.job_sha256": record["job_sha256"], "harness.submitted_spec": record["spec"]}
    original = Path(record["job"])
    now = sha256(original) if original.is_file() else "missing"
    tags["harness.job_changed_since_submit"] = str(now != record["job_sha256"]).lower()
    if now == record["job_sha256"]:
        return tags, None
    what = "was removed" if now == "missing" else f"changed (sha256 {now[:12]}, submitted {record['job_sha256'][:12]})"
    return tags, (f"note: {original} {what} since submission; this job runs the submitted copy "
                  f"{Path(spec.spec_path).parent / Path(spec.job).name}")
