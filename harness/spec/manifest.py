"""The launch manifest: one file, written before anything starts, that a training process reads.

Every verb that starts training (``run``, ``submit``, ``sweep``, ``scale``) writes a launch
folder holding ``launch.json`` and a copy of the job file, then starts the workers with
``python -m harness.runtime.worker --manifest FOLDER/launch.json``.  The manifest holds:

- the resolved spec of every point (defaults, ``--set`` overrides, absolute data paths; its
  ``job`` names the copy beside the manifest, so later edits of the original never reach a
  queued or requeued job);
- where the job file came from and its SHA-256 at launch (a changed original is reported);
- the MLflow run id of every point, created before launch (so nothing is handed back);
- the engine, the process layout, the tracking URI, whether the job resumes, and the sweep
  or scaling group the points belong to.

A single job is a manifest of one point (index 0); a SLURM job array is one manifest whose
task ``SLURM_ARRAY_TASK_ID`` trains point of that index.  The worker never re-reads the
original YAML, never parses ``--set`` strings and never learns its run id another way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from harness.errors import UserError
from harness.files import atomic_write_text
from harness.spec.jobs import job_source
from harness.spec.schema import JobSpec, describe

FILE_NAME = "launch.json"
VERSION = 1


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Layout:
    """How many processes, on how many nodes: what the launcher starts."""
    processes: int
    nodes: int = 1


@dataclass(frozen=True)
class Point:
    """One training job of the launch: its resolved spec and its MLflow run."""
    index: int
    spec: JobSpec
    run_id: Optional[str] = None
    name: str = ""
    values: dict = field(default_factory=dict)  # the sweep's values; the scale size
    layout: Optional["Layout"] = None  # its own process layout (a scaling run's sizes)


@dataclass(frozen=True)
class Manifest:
    verb: str  # run | submit | sweep | scale
    engine: str
    layout: Layout
    tracking_uri: str  # "" when tracking is off for this launch
    resume: bool  # continue a checkpoint when there is one (every batch job: requeues)
    points: tuple  # Point
    job_source: str  # the original job file
    job_sha256: str  # its hash when launched
    group: dict = field(default_factory=dict)  # {"kind": "sweep"|"scale", "id": ..., "parent_run_id": ...}
    options: dict = field(default_factory=dict)  # runtime switches (measure_allreduce)
    # Unix time the launch was written: telemetry steps count seconds from here, so a requeued
    # attempt continues the axis instead of overlapping the first one.
    created: float = 0.0
    path: Optional[Path] = None  # where it was read from or written to

    def layout_of(self, index: int = 0) -> Layout:
        return self.point(index).layout or self.layout

    def point(self, index: int = 0) -> Point:
        if not 0 <= index < len(self.points):
            raise UserError(f"{self.path}: point {index}, but the launch has {len(self.points)} "
                            f"point(s) (0..{len(self.points) - 1})")
        return self.points[index]

    @property
    def folder(self) -> Path:
        return Path(self.path).parent


def _spec_record(spec: JobSpec, job_copy: Path) -> dict:
    """The resolved spec as the manifest stores it: the job is the copy, the origin kept apart."""
    resolved = describe(dataclasses.replace(spec, job=str(job_copy)))
    resolved.pop("spec_path")
    return resolved


def _layout_record(layout: Optional[Layout]) -> Optional[dict]:
    return None if layout is None else {"processes": layout.processes, "nodes": layout.nodes}


def _layout(record: Optional[dict]) -> Optional[Layout]:
    return None if not record else Layout(record["processes"], record["nodes"])


def _content(m: Manifest, job_copy: Path) -> dict:
    return {
        "version": VERSION, "verb": m.verb, "engine": m.engine,
        "layout": _layout_record(m.layout),
        "tracking_uri": m.tracking_uri, "resume": m.resume,
        "job": {"source": m.job_source, "copy": str(job_copy), "sha256": m.job_sha256},
        "group": m.group, "options": m.options, "created": m.created,
        "points": [{"index": p.index, "name": p.name, "values": p.values, "run_id": p.run_id,
                    "layout": _layout_record(p.layout),
                    "spec_source": p.spec.spec_path, "spec": _spec_record(p.spec, job_copy)}
                   for p in m.points],
    }


def digest(m: Manifest) -> str:
    """A launch's identity without its run ids: what ``render`` and ``submit`` agree on."""
    content = _content(m, Path("job.py"))
    content.pop("created")
    for p in content["points"]:
        p.pop("run_id")
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new(verb: str, points: Sequence[Point], layout: Layout, tracking_uri: str, resume: bool,
        group: Optional[dict] = None, options: Optional[dict] = None) -> Manifest:
    """A manifest not yet written; every point shares the first point's job file and engine."""
    first = points[0].spec
    source = job_source(first)
    return Manifest(verb, first.training.engine, layout, tracking_uri, resume, tuple(points),
                    str(source), sha256(source), dict(group or {}), dict(options or {}),
                    time.time())


def write(m: Manifest, folder: Path) -> Manifest:
    """The job copy and ``launch.json`` in ``folder`` (atomic); the manifest with its path."""
    folder = Path(folder).resolve()
    job_copy = folder / Path(m.job_source).name
    if not job_copy.exists() or sha256(job_copy) != m.job_sha256:
        atomic_write_text(job_copy, Path(m.job_source).read_text())
    path = folder / FILE_NAME
    atomic_write_text(path, json.dumps(_content(m, job_copy), indent=1))
    return dataclasses.replace(m, path=path)


def with_run_ids(m: Manifest, run_ids: dict) -> Manifest:
    """The same launch with ``{point index: run id}`` filled in."""
    points = tuple(dataclasses.replace(p, run_id=run_ids.get(p.index, p.run_id)) for p in m.points)
    return dataclasses.replace(m, points=points)


def run_id_of(path: Path, index: int = 0) -> Optional[str]:
    """Point ``index``'s run id as written now (a quick read for polling; None when none yet)."""
    try:
        points = json.loads(Path(path).read_text())["points"]
    except (OSError, ValueError, KeyError):
        return None  # not written yet or being replaced: ask again
    return next((p.get("run_id") for p in points if p.get("index") == index), None)


def read(path: Path) -> Manifest:
    """The manifest at ``path``; its specs are built and checked again (a data file that has
    gone since launch is a one-line error, not a traceback in every rank)."""
    from harness.spec.loader import load_resolved
    path = Path(path).resolve()
    try:
        raw = json.loads(path.read_text())
        job, layout = raw["job"], raw["layout"]
        points = tuple(Point(p["index"], load_resolved(p["spec"], p["spec_source"], path),
                             p["run_id"], p["name"], p["values"], _layout(p.get("layout")))
                       for p in raw["points"])
        return Manifest(raw["verb"], raw["engine"], _layout(layout),
                        raw["tracking_uri"], raw["resume"], points, job["source"], job["sha256"],
                        raw.get("group") or {}, raw.get("options") or {}, raw["created"], path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a launch manifest ({type(e).__name__}: {e}); the harness "
                        "writes it when it starts or submits a job") from None


def discard(folder: Path) -> None:
    """Remove a launch folder (SLURM refused the job: nothing half-written stays)."""
    shutil.rmtree(folder, ignore_errors=True)


def provenance(m: Manifest) -> tuple[dict, Optional[str]]:
    """Run tags about the job file, and a line to print when the original changed since launch."""
    tags = {"harness.job_sha256": m.job_sha256, "harness.job_source": m.job_source}
    if m.verb == "run":
        return tags, None  # started at once: nothing can have changed in between
    original = Path(m.job_source)
    now = sha256(original) if original.is_file() else "missing"
    tags["harness.job_changed_since_submit"] = str(now != m.job_sha256).lower()
    if now == m.job_sha256:
        return tags, None
    what = ("was removed" if now == "missing"
            else f"changed (sha256 {now[:12]}, submitted {m.job_sha256[:12]})")
    return tags, (f"note: {original} {what} since submission; this job runs the submitted copy "
                  f"{m.folder / original.name}")
