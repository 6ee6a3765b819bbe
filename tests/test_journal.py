"""Rank 0's journal and the launcher's shipper: every call reaches the run, nothing is lost."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tracking.journal import CALLS, JournalTracker, Reader, append, describe_arrays
from tracking.shipper import JournalShipper
from tracking.tracker import Tracker

pytestmark = pytest.mark.tracking


def test_reader_returns_whole_records_only_and_picks_up_where_it_stopped(tmp_path):
    path = tmp_path / CALLS
    with open(path, "ab") as f:
        append(f, ("log_metrics", ({"loss": 1.0}, 0), {}))
        append(f, ("set_tags", ({"a": "b"},), {}))
    whole = path.read_bytes()
    reader = Reader(path)
    with open(path, "ab") as f:  # a third record, half written when the reader looks
        append(f, ("finish", ("FINISHED", ""), {}))
    full = path.read_bytes()
    path.write_bytes(full[:len(whole) + 5])
    assert [r[0] for r in reader.new()] == ["log_metrics", "set_tags"]
    assert reader.new() == []
    path.write_bytes(full)
    assert reader.new() == [("finish", ("FINISHED", ""), {})]
    assert Reader(tmp_path / "absent").new() == []


def test_journal_tracker_keeps_the_tracker_protocol():
    for name in {n for n in dir(Tracker) if not n.startswith("_")} - {"run_id", "location"}:
        want = [n for n in inspect.signature(getattr(Tracker, name)).parameters if n != "self"]
        got = [n for n in inspect.signature(getattr(JournalTracker, name)).parameters if n != "self"]
        assert got[:len(want)] == want, name


def test_dataset_description_names_shapes_and_changes_with_the_data():
    x, y = np.arange(24, dtype=np.float32).reshape(6, 4), np.zeros(6, dtype=np.int64)
    d = describe_arrays(x, y)
    assert d["profile"] == {"features_shape": [6, 4], "features_size": 24, "features_nbytes": 96,
                            "targets_shape": [6], "targets_size": 6, "targets_nbytes": 48}
    assert '"shape": [-1, 4]' in d["schema"]["mlflow_tensorspec"]["features"]
    assert '"dtype": "float32"' in d["schema"]["mlflow_tensorspec"]["features"]
    assert d["digest"] == describe_arrays(x.copy(), y)["digest"]
    x[0, 0] = 99
    assert d["digest"] != describe_arrays(x, y)["digest"]
    assert d["digest"] != describe_arrays(x[:5], y[:5])["digest"]


def _new_run(uri: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(uri)
    return client, client.create_run(client.create_experiment("journal")).info.run_id


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_every_call_reaches_the_run_in_order_with_its_own_time(tmp_path, store):
    """Params, tags, metrics stamped when logged, an artifact whose file was deleted before it
    was shipped, a dataset, the final status: all in the run."""
    client, run_id = _new_run(store)
    folder = tmp_path / "journal"
    shipper = JournalShipper.fresh(folder, lambda: run_id, store, tmp_path, resumed=False)
    shipper.start()
    tracker = JournalTracker(folder, run_id)
    tracker.log_params({"lr": 0.01})
    tracker.set_tags({"overfitting": "none"})
    tracker.log_metrics({"loss": 0.5}, step=0)
    tracker.log_system_metrics({"system/cpu_percent": 50.0}, step=3, timestamp_s=1_700_000_000)
    temporary = tmp_path / "tmp" / "spec.resolved.yaml"
    temporary.parent.mkdir()
    temporary.write_text("name: x\n")
    tracker.log_artifact(temporary)
    temporary.unlink()  # its owner's temporary folder is gone before the launcher ships it
    tracker.log_dataset("x-train", np.ones((5, 2), np.float32), np.zeros(5), {"job": "j"}, "training")
    assert tracker.location.startswith(f"MLflow run {run_id}: ")
    tracker.log_metrics({"loss": 0.4}, step=1)
    tracker.finish("FINISHED")
    tracker.log_metrics({"loss": 9.9}, step=2)  # after the end: not recorded
    shipper.settle(None)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.01"
    assert run.data.tags["overfitting"] == "none"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 0.5), (1, 0.4)]
    [sample] = client.get_metric_history(run_id, "system/cpu_percent")
    assert (sample.step, sample.timestamp) == (3, 1_700_000_000_000)
    assert [a.path for a in client.list_artifacts(run_id)] == ["spec.resolved.yaml"]
    [given] = run.inputs.dataset_inputs
    assert given.dataset.name == "x-train" and '"features_shape": [5, 2]' in given.dataset.profile
    assert not (folder / "files").exists()  # uploaded: the journal's copies are gone


@pytest.mark.parametrize("status", [None, "KILLED"])
def test_a_rank_that_died_loses_nothing_it_journaled(tmp_path, store, status):
    """Rank 0 killed outright (no finish): its metrics still reach the run; the run is left
    RUNNING for the launcher's own word on the failure, or marked KILLED after a Ctrl-C."""
    client, run_id = _new_run(store)
    folder = tmp_path / "journal"
    shipper = JournalShipper.fresh(folder, lambda: run_id, store, tmp_path, resumed=False)
    shipper.start()
    rank0 = subprocess.run(
        [sys.executable, "-c", "import os, sys\nfrom tracking.journal import JournalTracker\n"
         f"t = JournalTracker({str(folder)!r}, {run_id!r})\n"
         "for e in range(3): t.log_metrics({'loss': 1.0 / (e + 1)}, step=e)\n"
         "os._exit(9)"], cwd=Path(__file__).parents[1])
    assert rank0.returncode == 9
    shipper.settle(status)
    assert len(client.get_metric_history(run_id, "loss")) == 3
    assert client.get_run(run_id).info.status == (status or "RUNNING")
    assert "mlflow" not in subprocess.run(  # the point of it: rank 0 never loads MLflow
        [sys.executable, "-c", "import sys, tracking.journal, tracking.run\n"
         "print(sorted(m for m in sys.modules if m.startswith('mlflow')))"],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True).stdout.strip("[]\n")


def test_a_resumed_run_is_running_again_and_skips_the_steps_it_holds(tmp_path, store):
    client, run_id = _new_run(store)
    client.log_metric(run_id, "loss", 0.9, step=0)
    client.set_tag(run_id, "failure_reason", "earlier attempt")
    client.set_terminated(run_id, "KILLED")
    folder = tmp_path / "journal"
    shipper = JournalShipper.fresh(folder, lambda: run_id, store, tmp_path, resumed=True)
    shipper.start()
    tracker = JournalTracker(folder, run_id)
    for step in (0, 1):  # the checkpoint's history backfilled, then the next epoch
        tracker.log_metrics({"loss": 0.5}, step=step)
    assert tracker.location  # written once the run is open again
    assert client.get_run(run_id).info.status == "RUNNING"
    tracker.finish("FINISHED")
    shipper.settle(None)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 0.9), (1, 0.5)]


def test_a_journal_whose_launcher_died_is_imported_once(tmp_path, store):
    """The launcher was killed outright after shipping part of the journal; rank 0 went on
    journaling.  ``harness tracking import`` ships the rest, nothing twice, and marks the run
    KILLED (its rank 0 never finished it); a folder that is not a journal is exit 2."""
    from conftest import run_cli
    client, run_id = _new_run(store)
    folder = tmp_path / "journal"
    launcher = JournalShipper.fresh(folder, lambda: run_id, store, tmp_path, resumed=False)
    launcher.start()
    tracker = JournalTracker(folder, run_id)
    for step in (0, 1):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker.log_system_metrics({"system/cpu_percent": 10.0 * step}, step=step + 1)
    launcher.settle(None)  # what it shipped before it died
    tracker.log_metrics({"loss": 0.3}, step=2)  # rank 0 went on
    tracker.log_system_metrics({"system/cpu_percent": 30.0}, step=3)

    done = run_cli("tracking", "import", folder, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"into MLflow run {run_id}" in done.stdout and "marked KILLED" in done.stdout
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "system/cpu_percent")] == [1, 2, 3]
    assert client.get_run(run_id).info.status == "KILLED"

    refused = run_cli("tracking", "import", tmp_path, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "not a journal folder" in refused.stderr
