"""The one interface every part of the harness writes to MLflow through.

``MlflowTracker`` (tracking/mlflow_tracker.py) writes one MLflow run; ``NullTracker`` accepts every
call and records nothing, for ranks other than 0 and for tracking switched off, so job code never
branches on rank.  The training run, the telemetry of other nodes, the scaling sweep's parent
run and ``harness probe --log`` all go through it, so batching, retries and the fallback file
behave the same everywhere.
"""
from __future__ import annotations

from typing import Mapping, Optional, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    run_id: Optional[str]
    location: str  # "MLflow run <id>: <UI link>", for the closing lines; "" when nothing is recorded

    def log_params(self, params: Mapping) -> None:
        """Parameters; ones the run already has are left as they are (a resumed run)."""

    def set_tags(self, tags: Mapping) -> None:
        """Tags; never fails training (they describe, they do not measure)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queued for the background sender; a (key, step) logged before a resume is skipped."""

    def log_system_metrics(self, metrics: Mapping[str, float], step: int,
                           timestamp_s: Optional[float] = None) -> None:
        """Telemetry samples: queued like metrics, steps are seconds since the job started,
        stamped at ``timestamp_s`` (now when None)."""

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        """Upload a file; on failure it stays on disk and a line says so."""

    def log_dict(self, data: dict, name: str) -> None:
        """A JSON (or YAML, by ``name``'s suffix) artifact made from ``data``."""

    def log_dataset(self, name: str, features, targets, source: Mapping, context: str) -> None:
        """The data a run trained on, as an MLflow dataset input (name, digest, schema, shape)."""

    def log_dataset_description(self, name: str, digest: str, source: Mapping, profile: Mapping,
                                schema: Mapping, context: str) -> None:
        """A dataset input from a description (a shard manifest), without the data itself."""

    def log_summary(self, spec, history, final, verdict, marks=None, telemetry_lines=(),
                    timeline=None) -> None:
        """The loss-curve PNG and the HTML report."""

    def log_timeline(self, spec, samples, epoch_ends):
        """The telemetry timeline PNG; its path, or None."""

    def log_model(self, model) -> None:
        """The final Keras model."""

    def close(self) -> None:
        """Send what is queued (or write it to the fallback file); leave the run's status alone."""

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        """close(), then mark the run FINISHED, FAILED (with ``reason``) or KILLED."""


class NullTracker:
    """Accepts every call and records nothing: what ranks other than 0 use."""

    run_id: Optional[str] = None
    location: str = ""

    def log_params(self, params: Mapping) -> None:
        pass

    def set_tags(self, tags: Mapping) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_system_metrics(self, metrics: Mapping[str, float], step: int,
                           timestamp_s: Optional[float] = None) -> None:
        pass

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass

    def log_dataset(self, name: str, features, targets, source: Mapping, context: str) -> None:
        pass

    def log_dataset_description(self, name: str, digest: str, source: Mapping, profile: Mapping,
                                schema: Mapping, context: str) -> None:
        pass

    def log_summary(self, spec, history, final, verdict, marks=None, telemetry_lines=(),
                    timeline=None) -> None:
        pass

    def log_timeline(self, spec, samples, epoch_ends):
        return None

    def log_model(self, model) -> None:
        pass

    def close(self) -> None:
        pass

    def finish(self, status: str, reason: str = "", flush_s: Optional[float] = None) -> None:
        pass
