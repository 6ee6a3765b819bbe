"""Rank 0's tracker for a local launch: every call written to a journal the launcher ships.

Opening an MLflow run in rank 0 means importing MLflow and its SQL store there: 3 s of CPU on an
idle machine, about 5 s with training on both cores, on the critical path of every short job
(docs/benchmarks.md).  ``harness run``'s launcher has MLflow loaded already (it created the run)
and sits idle while the processes train.  So for a local launch rank 0 imports no MLflow at all:
``JournalTracker`` appends each call to a file in the launch folder, and the launcher's
``JournalShipper`` (tracking/shipper.py) replays it into the run as it grows.

What a call needs later travels with it: files are linked (or copied) into the journal folder
at once, since their owner may delete them (a temporary folder); metrics carry the time they
were logged; the summary plots are drawn by the launcher from the same arguments.  A rank that
crashes loses nothing it journaled: each record reaches the kernel before the call returns.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

JOURNAL_ENV = "HARNESS_TRACKING_JOURNAL"  # the journal folder, set by the launcher for rank 0
CALLS = "calls.journal"
FILES = "files"
LOCATION = "location"  # "MLflow run ID: LINK", written by the shipper once the run is open
_HEADER = struct.Struct("<Q")  # each record: its length, then the pickled (name, args, kwargs)
LOCATION_WAIT_S = 60.0


def append(stream, record: tuple) -> None:
    body = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


class Reader:
    """The records of a journal that may still be growing: ``new()`` returns the whole records
    written since the last call (a record being written is left for the next)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new(self) -> list:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        records, at = [], 0
        while at + _HEADER.size <= len(data):
            (length,) = _HEADER.unpack_from(data, at)
            if at + _HEADER.size + length > len(data):
                break
            records.append(pickle.loads(data[at + _HEADER.size:at + _HEADER.size + length]))
            at += _HEADER.size + length
        self.offset += at
        return records


def describe_arrays(features, targets) -> dict:
    """A dataset's digest, schema and profile in MLflow's numpy-dataset form, without MLflow:
    the digest hashes the first 10,000 values of each array and every dimension (as MLflow's
    does), the schema is MLflow's tensor spec, the profile its shapes and sizes."""
    digest = hashlib.md5()
    schema, profile = {}, {}
    for name, array in (("features", features), ("targets", targets)):
        if array is None:
            continue
        digest.update(array.reshape(-1)[:10_000].tobytes())
        for dim in array.shape:
            digest.update(str(int(dim)).encode())
        shape = [-1, *[int(d) for d in array.shape[1:]]]
        schema[name] = json.dumps([{"type": "tensor", "tensor-spec": {
            "dtype": str(array.dtype), "shape": shape}}])
        profile.update({f"{name}_shape": [int(d) for d in array.shape],
                        f"{name}_size": int(array.size), f"{name}_nbytes": int(array.nbytes)})
    return {"digest": digest.hexdigest()[:8], "schema": {"mlflow_tensorspec": schema},
            "profile": profile}


class JournalTracker:
    """The Tracker protocol (tracking/tracker.py) written to a journal; see the module's text."""

    def __init__(self, folder: Path, run_id: Optional[str] = None, run_id_of=None):
        self.folder = Path(folder)
        (self.folder / FILES).mkdir(parents=True, exist_ok=True)
        self._stream = open(self.folder / CALLS, "ab")
        self._lock = threading.Lock()
        self._files = 0
        self._known_run_id, self._run_id_of = run_id, run_id_of
        self._location: Optional[str] = None
        self._finished = False
        self._background: Optional[threading.Thread] = None

    def in_background(self, record) -> None:
        """Call ``record(...)`` (what the run records at its start) on a thread; what it
        journals lands before ``finish``."""
        self._background = threading.Thread(target=record, name="journal-start", daemon=True)
        self._background.start()

    def _write(self, name: str, *args, **kwargs) -> None:
        with self._lock:
            if self._finished:
                return
            append(self._stream, (name, args, kwargs))

    @property
    def run_id(self) -> Optional[str]:
        if self._known_run_id is None and self._run_id_of is not None:
            self._known_run_id = self._run_id_of()
        return self._known_run_id

    @property
    def location(self) -> str:
        """What the shipper wrote once the run was open ("" if it never says)."""
        if self._location is None:
            path, deadline = self.folder / LOCATION, time.monotonic() + LOCATION_WAIT_S
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            self._location = path.read_text() if path.exists() else ""
        return self._location

    def log_params(self, params: Mapping) -> None:
        self._write("log_params", dict(params))

    def set_tags(self, tags: Mapping) -> None:
        self._write("set_tags", dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write("log_metrics", {k: float(v) for k, v in metrics.items()}, step,
                    timestamp_s=time.time())

    def log_system_metrics(self, metrics: Mapping[str, float], step: int,
                           timestamp_s: Optional[float] = None) -> None:
        self._write("log_system_metrics", {k: float(v) for k, v in metrics.items()}, step,
                    timestamp_s=time.time() if timestamp_s is None else timestamp_s)

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        kept = self._keep(Path(path))
        if kept is not None:
            self._write("log_artifact", str(kept), artifact_path)

    def _keep(self, path: Path) -> Optional[Path]:
        """The file, linked (or copied) where its owner cannot delete it before it is shipped."""
        with self._lock:
            self._files += 1
            kept = self.folder / FILES / str(self._files) / path.name
        kept.parent.mkdir(parents=True)
        try:
            try:
                os.link(path, kept)
            except OSError:  # another file system, or a folder
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, kept)
        except OSError as e:
            print(f"tracking: could not keep {path} for the run ({type(e).__name__})", flush=True)
            return None
        return kept

    def log_dict(self, data: dict, name: str) -> None:
        self._write("log_dict", data, name)

    def log_dataset(self, name: str, features, targets, source: Mapping, context: str) -> None:
        described = describe_arrays(features, targets)
        self._write("log_dataset_description", name, described["digest"], dict(source),
                    described["profile"], described["schema"], context)

    def log_dataset_description(self, name: str, digest: str, source: Mapping, profile: Mapping,
                                schema: Mapping, context: str) -> None:
        self._write("log_dataset_description", name, digest, dict(source), dict(profile),
                    dict(schema), context)

    def log_summary(self, spec, history, final, verdict, marks=None, telemetry_lines=(),
                    timeline=None) -> None:
        """Drawn by the launcher (it has the plotting code loaded), from these arguments."""
        self._write("log_summary", spec, list(history), dict(final), verdict, marks,
                    list(telemetry_lines), timeline)

    def log_timeline(self, spec, samples, epoch_ends):
        """Drawn by the launcher; the path it will have (what the summary page links to)."""
        if not samples:
            return None
        self._write("log_timeline", spec, list(samples), list(epoch_ends))
        return spec.checkpoint_dir.parent / "telemetry_timeline.png"

    def log_model(self, model) -> None:
        path = self.folder / FILES / "model" / "model.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        self._write("log_artifact", str(path), "model")

    def close(self) -> None:
        with self._lock:
            self._stream.flush()

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        if self._background is not None:
            self._background.join()
        self._write("finish", status, reason)
        with self._lock:
            self._finished = True
            self._stream.close()
