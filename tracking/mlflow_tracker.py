"""Rank 0's MLflow run: metrics batched off the training thread, nothing lost if the server goes.

Training only ever puts metrics on a queue.  A background thread sends them
with ``log_batch`` (at most 1000 per call, MLflow's limit), retrying with
back-off while the server is down or slow.  Whatever is still unsent when
the run ends goes to a local JSON-lines fallback file that
``harness tracking import FILE`` sends later.
"""
from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.protos.service_pb2 import LogBatch, SearchExperiments
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
FLUSH_EVERY_S = 5.0  # a send costs CPU on the training node: batch five seconds of samples
FINAL_FLUSH_S = 30.0
QUICK_TIMEOUT_S = 10.0  # one try of the sender's (or the reachability check's) request

# MLflow prints its own "View run ... at" line when a run ends: a link that opens the UI's GenAI
# view.  The harness prints its own links (tracking/links.py), which open Model training.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _rest_store(client: MlflowClient) -> Optional[RestStore]:
    """The client's REST store; None for a local SQLite store, where nothing can time out."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, RestStore) else None


def _quick_call(store: RestStore, api, message) -> None:
    """One request, no retries, a short timeout.

    MLflow retries a request for minutes on a dead server (MLFLOW_HTTP_REQUEST_MAX_RETRIES):
    right for run creation, parameters, artifacts and the final status, which keep those
    retries, but not for the sender, which keeps its metrics and retries on its own schedule,
    nor for a reachability check.  MLflow reads the retry count from the environment for
    every request, process-wide, so the quick calls make their own request instead.
    """
    endpoint, method = RestStore._METHOD_TO_INFO[api]
    body = json.loads(message_to_json(message))
    response = http_request(store.get_host_creds(), endpoint, method, json=body, max_retries=0,
                            timeout=QUICK_TIMEOUT_S)
    verify_rest_response(response, endpoint)


def send_batch(client: MlflowClient, run_id: str, metrics: list) -> None:
    """log_batch for the sender: one quick try over HTTP, a plain call into SQLite."""
    store = _rest_store(client)
    if store is None:
        client.log_batch(run_id, metrics=metrics, synchronous=True)
        return
    _quick_call(store, LogBatch, LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics]))


def ping(client: MlflowClient) -> None:
    """Raise unless the tracking server answers a search within seconds."""
    store = _rest_store(client)
    if store is None:
        client.search_experiments(max_results=1)
        return
    _quick_call(store, SearchExperiments, SearchExperiments(max_results=1))


class MetricSender(threading.Thread):
    """Drains a queue of Metric objects into MLflow in batches; keeps them while it cannot."""

    def __init__(self, client: MlflowClient, run_id: str, fallback: Path, uri: str = "",
                 say=print):
        super().__init__(name="mlflow-sender", daemon=True)
        self.client, self.run_id, self.fallback = client, run_id, fallback
        self.uri, self.say = uri, say
        self.queue: "queue.Queue[Metric]" = queue.Queue()
        self.pending: list[Metric] = []
        self.stopping = threading.Event()
        self.failures = 0
        self.last_error = ""
        self.down_since: Optional[float] = None  # monotonic time of the first failed send

    def run(self) -> None:
        # Jobs started together (a sweep's array) would flush in the same instant every period
        # for as long as they run, and the server would take every job's call at once: a random
        # phase spreads their calls over the period (benches/tracking_load.py --burst shows why).
        self.stopping.wait(random.uniform(0, FLUSH_EVERY_S))
        backoff = FLUSH_EVERY_S
        while not self.stopping.is_set():
            self._drain()
            waiting = len(self.pending)
            if self._send():
                backoff = FLUSH_EVERY_S
                self._note_up(waiting)
            else:
                backoff = min(backoff * 2, 30.0)
                self._note_down()
            self.stopping.wait(backoff)

    def _note_down(self) -> None:
        """Say once that the server went away; training goes on and the metrics wait."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.say(f"tracking: {self.uri or 'the tracking server'} unreachable "
                     f"({self.last_error}); training goes on, {len(self.pending)} metric values "
                     "wait and are sent when it answers", flush=True)

    def _note_up(self, delivered: int) -> None:
        """Say once that it is back and everything that waited was delivered."""
        if self.down_since is not None:
            self.say(f"tracking: {self.uri or 'the tracking server'} reachable again after "
                     f"{time.monotonic() - self.down_since:.0f} s; {delivered} waiting metric "
                     "values delivered", flush=True)
            self.down_since = None

    def _drain(self) -> None:
        while True:
            try:
                self.pending.append(self.queue.get_nowait())
            except queue.Empty:
                return

    def _send(self) -> bool:
        """Send what is pending; False (and keep it) on any failure."""
        while self.pending:
            chunk = self.pending[:MAX_METRICS_PER_BATCH]
            try:
                send_batch(self.client, self.run_id, chunk)
            except Exception as e:  # any transport or server error: keep the metrics, retry later
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                return False
            del self.pending[:len(chunk)]
        return True

    def close(self, deadline_s: float = FINAL_FLUSH_S) -> int:
        """Stop, try to send the rest until the deadline; return how many went to the fallback."""
        self.stopping.set()
        self.join(timeout=deadline_s)
        self._drain()
        waiting = len(self.pending)
        end = time.monotonic() + deadline_s
        while self.pending and time.monotonic() < end and not self._send():
            time.sleep(1.0)
        if not self.pending:
            self._note_up(waiting)  # an outage that ends in the final flush is reported too
            return 0
        write_fallback(self.fallback, self.run_id, self.pending)
        return len(self.pending)


def write_fallback(path: Path, run_id: str, metrics: list) -> None:
    """Append unsent metrics as JSON lines (append: a run may fall back more than once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for m in metrics:
            f.write(json.dumps({"run_id": run_id, "key": m.key, "value": m.value,
                                "timestamp": m.timestamp, "step": m.step}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_fallback(path: Path) -> list[dict]:
    """A fallback file's rows; ValueError naming the first line that is not one."""
    rows = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = {}
        if row is not None and not {"run_id", "key", "value", "timestamp", "step"} <= set(row):
            raise ValueError(f"line {number} is not a metric row of a fallback file")
        if row:
            rows.append(row)
    return rows


def import_fallback(path: Path, client: MlflowClient, rows: Optional[list] = None) -> int:
    """Send a fallback file's metrics to MLflow, skipping (key, step) pairs already there."""
    rows = read_fallback(path) if rows is None else rows
    sent = 0
    for run_id in sorted({r["run_id"] for r in rows}):
        present = logged_steps(client, run_id)
        todo = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows
                if r["run_id"] == run_id and r["step"] not in present.get(r["key"], set())]
        for i in range(0, len(todo), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=todo[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
        sent += len(todo)
    return sent


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, set]:
    """{metric key: every step already logged} for a run (the fallback import fills gaps)."""
    keys = client.get_run(run_id).data.metrics.keys()
    return {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}


def last_logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """{metric key: the highest step logged}, from one read of the run.

    MLflow keeps each key's latest metric (highest step) with the run, so a resume learns where
    every curve stopped without fetching any history: a run holding a week of telemetry resumes
    as fast as an empty one.
    """
    run = client.get_run(run_id)
    return {m.key: int(m.step) for m in getattr(run.data, "_metric_objs", [])}


class MlflowTracker:
    """One MLflow run, driven by rank 0 only."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str, fallback: Path,
                 already_logged: Optional[dict] = None):
        # {key: last step logged before this attempt}: steps of a run only grow, so a step at
        # or below it was logged by an earlier attempt.
        self.client, self.run_id, self.uri = client, run_id, uri
        self.already_logged = already_logged or {}
        self.sender = MetricSender(client, run_id, fallback, uri)
        self.sender.start()
        self._location = ""
        self.finished = False
        self.closed = False
        self.files_not_uploaded: list[str] = []

    @property
    def location(self) -> str:
        """``MLflow run ID: LINK`` for the closing lines (asked once, then remembered)."""
        if not self._location:
            from tracking.links import run_line
            self._location = run_line(self.client, self.uri, self.run_id)
        return self._location

    def log_params(self, params: Mapping) -> None:
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping) -> None:
        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception as e:  # tags are descriptive: never fail training for them
            print(f"tracking: could not set tags ({type(e).__name__}); continuing", flush=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int,
                    timestamp_s: Optional[float] = None) -> None:
        """Queued for the sender, stamped now (or at ``timestamp_s``: a journaled call)."""
        self._queue(metrics, step, timestamp_s)

    def log_system_metrics(self, metrics: Mapping[str, float], step: int,
                           timestamp_s: Optional[float] = None) -> None:
        """Telemetry samples: same sender, stamped with the sample's own time (a window's mean:
        the window's end).  Steps are seconds on the launch's axis, which a resumed attempt
        continues, so a step the run already holds was shipped before (a journal imported
        after its launcher died)."""
        self._queue(metrics, step, timestamp_s)

    def _queue(self, metrics: Mapping[str, float], step: int, timestamp_s: Optional[float]):
        now = int((time.time() if timestamp_s is None else timestamp_s) * 1000)
        for key, value in metrics.items():
            if step <= self.already_logged.get(key, -1):
                continue  # logged before a crash, a preemption or a dead launcher: once each
            self.sender.queue.put(Metric(key, float(value), now, step))

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as e:
            self.files_not_uploaded.append(str(path))
            print(f"tracking: could not upload {path} ({type(e).__name__}); it stays on disk",
                  flush=True)

    def log_summary(self, spec, history, final, verdict, marks=None, telemetry_lines=(),
                    timeline=None) -> None:
        """Loss-curve PNG and HTML report, written beside the checkpoints and uploaded."""
        from tracking import report
        if not history:
            return
        folder = spec.checkpoint_dir.parent
        folder.mkdir(parents=True, exist_ok=True)
        png = report.loss_curve_png(history, folder / "loss_curve.png", spec.name, marks)
        page = folder / "report.html"
        page.write_text(report.html_report(spec.name, history, final, verdict, png,
                                           [report.telemetry_section(telemetry_lines, timeline)],
                                           marks))
        self.log_artifact(png)
        self.log_artifact(page)

    def log_timeline(self, spec, samples, epoch_ends):
        """GPU (or, without GPUs, host) use over time with epoch ends marked, as a PNG artifact."""
        from tracking import report
        if not samples:
            return None
        folder = spec.checkpoint_dir.parent
        folder.mkdir(parents=True, exist_ok=True)
        path = report.timeline_png(samples, epoch_ends, folder / "telemetry_timeline.png")
        self.log_artifact(path)
        return path

    def log_dict(self, data: dict, name: str) -> None:
        try:
            self.client.log_dict(self.run_id, data, name)
        except Exception as e:
            print(f"tracking: could not upload {name} ({type(e).__name__})", flush=True)

    def log_dataset(self, name: str, features, targets, source: Mapping, context: str) -> None:
        """MLflow's dataset input: name, digest, schema and shape, and where it came from."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        try:
            dataset = from_numpy(features, targets=targets, name=name,
                                 source=CodeDatasetSource({k: str(v) for k, v in source.items()}))
            entity = Dataset(**dataset.to_dict())
            self.client.log_inputs(self.run_id, [DatasetInput(
                entity, [InputTag("mlflow.data.context", context)])])
        except Exception as e:  # a description of the data: never fail training for it
            print(f"tracking: could not log the {name} dataset ({type(e).__name__}: {e})",
                  flush=True)

    def log_dataset_description(self, name: str, digest: str, source: Mapping, profile: Mapping,
                                schema: Mapping, context: str) -> None:
        """A dataset input described without its data (a shard folder's manifest): MLflow keeps
        the name, digest, source, sample count and schema, and never sees an array."""
        try:
            entity = Dataset(name=name, digest=digest, source_type="local",
                             source=json.dumps({k: str(v) for k, v in source.items()}),
                             schema=json.dumps(dict(schema)), profile=json.dumps(dict(profile)))
            self.client.log_inputs(self.run_id, [DatasetInput(
                entity, [InputTag("mlflow.data.context", context)])])
        except Exception as e:  # a description of the data: never fail training for it
            print(f"tracking: could not log the {name} dataset ({type(e).__name__}: {e})",
                  flush=True)

    def log_model(self, model) -> None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            model.save(path)
            self.log_artifact(path, "model")

    def close(self, flush_s: float = FINAL_FLUSH_S) -> None:
        """Send what is queued; what cannot be sent goes to the fallback file, and a line says so."""
        if self.closed:
            return
        self.closed = True
        unsent = self.sender.close(deadline_s=flush_s)
        if unsent:
            print(f"tracking: {unsent} metric values could not reach {self.uri} "
                  f"({self.sender.last_error}); saved to {self.sender.fallback}. "
                  f"Import them later with: harness tracking import {self.sender.fallback}",
                  flush=True)

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        if self.finished:
            return
        self.finished = True
        # Killed: horovodrun or SLURM follow SIGTERM with SIGKILL within seconds, so flush briefly
        # and leave the rest in the fallback file rather than lose it mid-send.
        if flush_s is None:
            flush_s = 3.0 if status == "KILLED" else FINAL_FLUSH_S
        self.close(flush_s)
        if reason:
            self.set_tags({"failure_reason": reason})
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:
            print(f"tracking: could not mark the run {status} ({type(e).__name__})", flush=True)
