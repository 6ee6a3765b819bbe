"""Spec loading: every shipped spec validates; bad input is exit 2 with one clear line."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_cli
from harness.cli import main
from harness.errors import UserError
from harness.spec.loader import load_spec
from harness.spec.schema import slurm_time_seconds

JOBS = REPO / "jobs"


def test_shipped_specs_validate(mnist_npz):
    # The lecture's example 1 runs as written: its CSV ships beside the job (768 rows + header).
    diabetes = load_spec(JOBS / "diabetes_mlp.yaml")
    assert Path(diabetes.data.csv) == (JOBS / "data" / "pima-indians-diabetes.csv").resolve()
    assert len(Path(diabetes.data.csv).read_text().splitlines()) == 769
    assert load_spec(JOBS / "mnist_mlp.yaml", [f"data.path={mnist_npz}"]).training.batch_size == 128
    lens = load_spec(JOBS / "lensfinder_cnn.yaml")
    assert lens.data.num_pix == 48 and lens.resources.partition == "rtx2080ti"
    assert load_spec(JOBS / "synthetic.yaml").name == "synthetic"


def test_overrides_are_typed_and_validated(pima_csv):
    spec = load_spec(JOBS / "diabetes_mlp.yaml",
                     [f"data.csv={pima_csv}", "training.epochs=3", "training.learning_rate=0.01",
                      "checkpoint.dir=/tmp/x", "tracking.required=false"])
    assert (spec.training.epochs, spec.training.learning_rate) == (3, 0.01)
    assert spec.checkpoint_dir == Path("/tmp/x") and spec.tracking.required is False


def test_validate_prints_resolved_spec(pima_csv, capsys):
    assert main(["validate", str(JOBS / "diabetes_mlp.yaml"), "--set", f"data.csv={pima_csv}"]) == 0
    out = capsys.readouterr().out
    assert "batch_size: 10" in out and str(pima_csv) in out


def test_slurm_time_formats():
    assert slurm_time_seconds("01:00:00") == 3600
    assert slurm_time_seconds("1-02:00:00") == 93600
    assert slurm_time_seconds("30") == 1800
    assert slurm_time_seconds("1-2") == 93600
    assert slurm_time_seconds("1h") is None


GOOD = """
name: t
job: diabetes_mlp.py
data: {csv: CSV}
training: {epochs: 2}
"""

BAD = [  # (yaml or overrides, words the one-line error must contain)
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {epochz: 2}", ["training.epochz", "unknown key", "epochs (default 10)"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nfoo: 1", ["foo", "unknown key", "training"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {epochs: 0}", ["training.epochs=0", "1..100000"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {epochs: ten}", ["training.epochs='ten'", "integer"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {epochs: 2.5}", ["training.epochs=2.5", "integer"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {batch_size: -4}", ["training.batch_size=-4", "1..65536"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {optimizer: lbfgs}", ["training.optimizer='lbfgs'", "adadelta"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {learning_rate: 0}", ["training.learning_rate=0", "(0, 10]"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {lr_scaling: cubic}", ["training.lr_scaling='cubic'", "sqrt"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {warmup_epochs: -1}", ["training.warmup_epochs=-1", "0..1000"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {lr_decay: step}", ["training.lr_decay='step'", "none, cosine"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {seed: -3}", ["training.seed=-3", ">= 0"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {early_stopping: maybe}", ["training.early_stopping='maybe'", "true or false"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ncheckpoint: {every_epochs: 0}", ["checkpoint.every_epochs=0", ">= 1"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {engine: pytorch}", ["training.engine='pytorch'", "horovod, tf"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: {engine: tf, fp16_allreduce: true}", ["training.fp16_allreduce=True", "only the horovod engine", "engine=tf"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nresources: {nodes: 0}", ["resources.nodes=0", "1..64"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nresources: {gpus_per_node: 99}", ["resources.gpus_per_node=99", "0..16"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nresources: {time: 1h}", ["resources.time='1h'", "HH:MM:SS"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nresources: {time: 1:00:00}", ["resources.time=3600", "quote it"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\nresources: {partition: 'a b;rm'}", ["resources.partition", "letters"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntelemetry: {interval_s: 0}", ["telemetry.interval_s=0", "0.1..60"]),
    ("name: 'has space'\njob: diabetes_mlp.py\ndata: {csv: CSV}", ["name='has space'", "no spaces"]),
    ("job: diabetes_mlp.py\ndata: {csv: CSV}", ["name", "missing"]),
    ("name: t\ndata: {csv: CSV}", ["job=None", "required"]),
    ("name: t\njob: nosuchjob.py\ndata: {csv: CSV}", ["job='nosuchjob.py'", "no such file"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: /nonexistent/p.csv}", ["data.csv='/nonexistent/p.csv'", "file not found"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV, test_rows: 0}", ["data.test_rows=0", "1..100"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV, colour: red}", ["data.colour", "unknown key", "csv"]),
    ("name: t\njob: diabetes_mlp.py\ndata: [1, 2]", ["data", "expected a mapping"]),
    ("name: t\njob: diabetes_mlp.py\ndata: {csv: CSV}\ntraining: [1]", ["training", "expected a mapping"]),
    ("name: t\n  job: : x\n", ["malformed YAML", "line"]),
    ("- just\n- a list\n", ["expected a mapping"]),
]


def _write(tmp_path: Path, text: str, csv: Path) -> Path:
    (tmp_path / "diabetes_mlp.py").write_text((JOBS / "diabetes_mlp.py").read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("CSV", str(csv)))
    return spec


@pytest.mark.parametrize("text,words", BAD, ids=[w[0] for _, w in BAD])
def test_bad_spec_is_one_clear_line(tmp_path, pima_csv, capsys, text, words):
    spec = _write(tmp_path, text, pima_csv)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: {spec}")
    for word in words:
        assert word in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


BAD_FLAGS = [
    (["validate"], "required: spec"),
    (["run", "SPEC", "--np", "two"], "invalid int value"),
    (["run", "SPEC", "--np", "0"], "--np 0"),
    (["run", "SPEC", "--set", "training.epochs"], "expected key=value"),
    (["run", "SPEC", "--set", "training.epochs=-1"], "training.epochs=-1"),
    (["run", "SPEC", "--set", "training..epochs=1"], "expected key=value"),
    (["run", "SPEC", "--frobnicate"], "unrecognized arguments"),
    (["launch", "SPEC"], "invalid choice"),
]


@pytest.mark.parametrize("argv,words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_one_clear_line(tmp_path, pima_csv, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, GOOD, pima_csv)
    assert main([str(spec) if a == "SPEC" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_spec_from_a_real_shell(tmp_path):
    result = run_cli("run", tmp_path / "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: spec file not found; give the path to a job's .yaml"


def test_data_path_that_is_a_folder(tmp_path):
    spec = _write(tmp_path, GOOD, tmp_path)
    with pytest.raises(UserError, match=r"data.csv=.*not a file"):
        load_spec(spec)
