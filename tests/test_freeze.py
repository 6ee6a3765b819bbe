"""A submitted job runs the spec and job file as they were at submission, and says when the
originals changed since."""
from __future__ import annotations

import shutil

from conftest import REPO
from harness.spec import freeze
from harness.spec.loader import load_spec
from harness.spec.schema import describe


def _copy_job(tmp_path):
    for name in ("diabetes_mlp.py", "diabetes_mlp.yaml"):
        shutil.copy(REPO / "jobs" / name, tmp_path / name)
    return tmp_path / "diabetes_mlp.yaml"


def test_the_frozen_spec_is_the_resolved_spec_and_ignores_later_edits(tmp_path, pima_csv):
    original = _copy_job(tmp_path)
    spec = load_spec(original, [f"data.csv={pima_csv}", "training.epochs=7"])
    frozen_path = freeze.freeze(spec, tmp_path / "slurm", "diabetes_mlp-1")
    # The user edits both files while the job waits in the queue.
    original.write_text(original.read_text().replace("epochs: 150", "epochs: 3"))
    (tmp_path / "diabetes_mlp.py").write_text("raise SystemExit('edited')\n")

    frozen = load_spec(frozen_path)
    want, got = describe(spec), describe(frozen)
    for key in ("job", "spec_path"):
        want.pop(key), got.pop(key)
    assert got == want and frozen.training.epochs == 7 and frozen.data.csv == str(pima_csv)
    assert frozen.job == "diabetes_mlp-1.job.py"

    tags, note = freeze.provenance(frozen)
    assert tags["harness.job_changed_since_submit"] == "true"
    assert tags["harness.job_sha256"] == freeze.sha256(tmp_path / "slurm" / "diabetes_mlp-1.job.py")
    assert note.startswith("note: ") and "changed" in note and "submitted copy" in note


def test_an_unchanged_job_file_says_nothing_and_a_local_run_records_its_hash(tmp_path, pima_csv):
    original = _copy_job(tmp_path)
    spec = load_spec(original, [f"data.csv={pima_csv}"])
    tags, note = freeze.provenance(load_spec(freeze.freeze(spec, tmp_path / "s", "x")))
    assert note is None and tags["harness.job_changed_since_submit"] == "false"
    local_tags, local_note = freeze.provenance(spec)
    assert local_note is None
    assert local_tags == {"harness.job_sha256": freeze.sha256(tmp_path / "diabetes_mlp.py")}


def test_discard_leaves_nothing(tmp_path, pima_csv):
    spec = load_spec(_copy_job(tmp_path), [f"data.csv={pima_csv}"])
    freeze.freeze(spec, tmp_path / "s", "x")
    freeze.discard(tmp_path / "s", "x")
    assert list((tmp_path / "s").iterdir()) == []
