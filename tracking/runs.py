"""Runs of one tracking URI as the orchestrators use them: sweeps, scaling runs, their summaries.

Every MLflow call the harness makes lives in ``tracking/``: the training run goes through the
Tracker (tracking/tracker.py); the parent and child runs of a sweep or a scaling run, their
reconciliation with SLURM and their results go through ``RunStore``.  Its methods keep the names
of MLflow's client where they do the same, so code that reads runs back reads as MLflow's docs.
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping, Optional


class RunStore:
    def __init__(self, uri: str):
        from tracking.mlflow_tracker import MlflowClient
        self.uri = uri
        self.client = MlflowClient(uri)

    # ------------------------------------------------------------------ writing
    def create(self, experiment: str, run_name: str, tags: Mapping = (),
               parent_run_id: Optional[str] = None, params: Mapping = (),
               status: Optional[str] = None) -> str:
        """A new run (a child when ``parent_run_id``), its parameters, its status; its id."""
        from tracking.run import create_run
        from mlflow.entities import Param
        run_id = create_run(self.client, experiment, run_name, dict(tags), parent_run_id)
        if params:
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if status:
            self.client.update_run(run_id, status=status)
        return run_id

    def set_tag(self, run_id: str, key: str, value) -> None:
        self.client.set_tag(run_id, key, str(value))

    def delete_tag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    def set_terminated(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in values.items()])

    def delete_runs(self, run_ids: Iterable[str]) -> None:
        """Best effort: runs that describe something that will not happen (SLURM refused it)."""
        for run_id in run_ids:
            try:
                self.client.delete_run(run_id)
            except Exception:  # the refusal itself is what the user must see
                pass

    # ------------------------------------------------------------------ reading
    def get_run(self, run_id: str):
        """MLflow's Run: ``.info.status``, ``.data.metrics``, ``.data.params``, ``.data.tags``."""
        return self.client.get_run(run_id)

    def link(self, run_id: str) -> str:
        """The run's page in the UI's Model training view (tracking/links.py)."""
        from tracking.links import link_to_run
        return link_to_run(self.client, self.uri, run_id)

    def get_metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)


def import_fallback_file(path) -> tuple[int, str]:
    """``harness tracking import``: a fallback file's metrics into the tracking URI; (count, URI)."""
    from harness.errors import UserError
    from tracking.mlflow_tracker import MlflowClient, import_fallback, read_fallback
    from tracking.run import tracking_uri
    try:
        rows = read_fallback(path)  # before any store is opened: a wrong file changes nothing
    except ValueError as e:
        raise UserError(f"{path}: {e}; give an mlflow-fallback-*.jsonl or "
                        "telemetry-fallback-*.jsonl file, or an SQLite store") from None
    uri = tracking_uri()
    return import_fallback(path, MlflowClient(uri), rows), uri
