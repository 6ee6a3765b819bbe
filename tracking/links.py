"""Links into the MLflow UI that open its Model training view.

MLflow 3's UI opens an experiment in one of two views, GenAI (traces, prompts, judges) or Model
training (runs, their metric charts, the model registry).  A browser that has never switched
views gets GenAI, whatever the experiment's ``mlflow.experimentKind`` tag says; the URL
parameter ``workflowType=machine_learning`` chooses Model training (checked in Chromium with a
fresh profile, tests/test_links.py).  Every link the harness prints is made here.

A local SQLite store has no server: its links name where ``mlflow ui`` serves it by default, and
``open_hint`` says how to start that.
"""
from __future__ import annotations

from typing import Iterable

VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # `mlflow ui`'s default address


def ui_root(uri: str) -> str:
    """The UI's address for a tracking URI: the server itself, or a local `mlflow ui`."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def experiment_link(uri: str, experiment_id: str) -> str:
    return f"{ui_root(uri)}/#/experiments/{experiment_id}/runs?{VIEW}"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_root(uri)}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def compare_link(uri: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    runs = ",".join(f'"{r}"' for r in run_ids)
    return f'{ui_root(uri)}/#/compare-runs?runs=[{runs}]&experiments=["{experiment_id}"]&{VIEW}'


def open_hint(uri: str) -> str:
    """What to run before a link to a local store opens ("" for a server)."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f" (start the UI first: mlflow ui --backend-store-uri {uri})"


def openable_run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's link, and for a local store how to start the UI that opens it."""
    return f"{run_link(uri, experiment_id, run_id)}{open_hint(uri)}"


def link_to_run(client, uri: str, run_id: str) -> str:
    """The run's link (and how to open it), its experiment read from the store; the URI alone
    when the store cannot say (a link is a convenience, never a reason to fail)."""
    try:
        experiment = client.get_run(run_id).info.experiment_id
    except Exception:
        return uri
    return openable_run_link(uri, experiment, run_id)


def run_line(client, uri: str, run_id: str) -> str:
    """``MLflow run ID: LINK``, for the closing lines."""
    return f"MLflow run {run_id}: {link_to_run(client, uri, run_id)}"
