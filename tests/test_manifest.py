"""The launch manifest: a job runs the spec and job file as they were at launch, learns its run
and its point from the manifest alone, and says when the original job file changed since."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from conftest import REPO
from harness.errors import UserError
from harness.runtime.worker import point_index
from harness.spec import manifest
from harness.spec.loader import load_spec
from harness.spec.schema import describe
from slurm.environment import SlurmEnvironment


def _copy_job(tmp_path):
    for name in ("diabetes_mlp.py", "diabetes_mlp.yaml"):
        shutil.copy(REPO / "jobs" / name, tmp_path / name)
    return tmp_path / "diabetes_mlp.yaml"


def _launch(spec, verb="submit", run_id=None, **kw):
    return manifest.new(verb, [manifest.Point(0, spec, run_id)], manifest.Layout(2), "http://h:5000",
                        True, **kw)


def test_the_manifest_holds_the_resolved_spec_and_ignores_later_edits(tmp_path, pima_csv):
    original = _copy_job(tmp_path)
    spec = load_spec(original, [f"data.csv={pima_csv}", "training.epochs=7"])
    written = manifest.write(_launch(spec, run_id="abc123"), tmp_path / "launch")
    # The user edits both files while the job waits in the queue.
    original.write_text(original.read_text().replace("epochs: 150", "epochs: 3"))
    (tmp_path / "diabetes_mlp.py").write_text("raise SystemExit('edited')\n")

    launch = manifest.read(written.path)
    point = launch.point(0)
    want, got = describe(spec), describe(point.spec)
    assert got.pop("job") == str(tmp_path / "launch" / "diabetes_mlp.py")  # the copy
    want.pop("job")
    assert got == want and point.spec.training.epochs == 7 and point.spec.data.csv == str(pima_csv)
    assert point.run_id == "abc123" and launch.tracking_uri == "http://h:5000" and launch.resume
    assert launch.layout.processes == 2 and launch.engine == "horovod"

    tags, note = manifest.provenance(launch)
    assert tags["harness.job_changed_since_submit"] == "true"
    assert tags["harness.job_sha256"] == manifest.sha256(tmp_path / "launch" / "diabetes_mlp.py")
    assert note.startswith("note: ") and "changed" in note and "submitted copy" in note


def test_an_unchanged_job_says_nothing_and_a_local_run_only_records_the_hash(tmp_path, pima_csv):
    spec = load_spec(_copy_job(tmp_path), [f"data.csv={pima_csv}"])
    queued = manifest.read(manifest.write(_launch(spec), tmp_path / "q").path)
    tags, note = manifest.provenance(queued)
    assert note is None and tags["harness.job_changed_since_submit"] == "false"
    local = manifest.read(manifest.write(_launch(spec, verb="run"), tmp_path / "r").path)
    tags, note = manifest.provenance(local)
    assert note is None and "harness.job_changed_since_submit" not in tags
    assert tags["harness.job_sha256"] == manifest.sha256(tmp_path / "diabetes_mlp.py")


def test_the_digest_is_the_launch_without_its_run_and_its_time(tmp_path, pima_csv):
    """What render and submit agree on: the same job names the same folder; any change, not."""
    spec = load_spec(_copy_job(tmp_path), [f"data.csv={pima_csv}"])
    first, second = _launch(spec), _launch(spec, run_id="r1")
    second = dataclasses.replace(second, created=first.created + 100)
    assert manifest.digest(first) == manifest.digest(second)
    other = load_spec(tmp_path / "diabetes_mlp.yaml", [f"data.csv={pima_csv}", "training.epochs=3"])
    assert manifest.digest(_launch(other)) != manifest.digest(first)
    assert manifest.digest(_launch(spec, group={"kind": "sweep", "id": "x"})) != manifest.digest(first)


def test_a_data_file_gone_since_launch_is_one_line_naming_the_manifest(tmp_path, pima_csv):
    data = tmp_path / "pima.csv"
    shutil.copy(pima_csv, data)
    spec = load_spec(_copy_job(tmp_path), [f"data.csv={data}"])
    path = manifest.write(_launch(spec), tmp_path / "launch").path
    data.unlink()
    with pytest.raises(UserError) as err:
        manifest.read(path)
    assert str(err.value).startswith(str(path)) and "file not found" in str(err.value)
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(UserError, match="not a launch manifest"):
        manifest.read(path)


def test_an_array_task_trains_the_point_its_index_names():
    array = SlurmEnvironment(job_id="7", array_task_id="3")
    assert point_index(None, array, 4) == 3
    assert point_index(1, array, 4) == 1  # --index by hand wins
    assert point_index(None, SlurmEnvironment(), 1) == 0
    with pytest.raises(UserError, match="SLURM_ARRAY_TASK_ID"):
        point_index(None, SlurmEnvironment(), 4)


def test_rank_0_waits_for_the_run_the_launcher_writes_into_the_manifest(tmp_path, pima_csv):
    """`harness run` creates its run while the processes start; rank 0's tracking thread reads
    the id from the manifest once the launcher has written it there."""
    import threading

    from harness.runtime import launches
    spec = load_spec(_copy_job(tmp_path), [f"data.csv={pima_csv}"])
    launch = manifest.write(_launch(spec, verb="run", options={launches.RUN_PENDING: True}),
                            tmp_path / "pending")
    assert manifest.run_id_of(launch.path) is None
    found = []
    waiter = threading.Thread(target=lambda: found.append(launches.wait_for_run(launch.path)))
    waiter.start()
    manifest.write(manifest.with_run_ids(launch, {0: "r9"}), launch.path.parent)
    waiter.join(timeout=60)
    assert found == ["r9"] and manifest.read(launch.path).point(0).run_id == "r9"
    with pytest.raises(RuntimeError, match="wrote no run id within"):
        launches.wait_for_run(manifest.write(_launch(spec, verb="run"), tmp_path / "none").path,
                              timeout_s=0.5)
