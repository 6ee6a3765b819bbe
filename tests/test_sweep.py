"""`harness sweep`: the search space, the refusal of a bad point, and a real local sweep.

The SLURM job array is tested in tests/test_slurm.py (a real array on the dev SLURM), the
MLflow UI's view of a sweep in tests/test_browser.py.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, run_cli
from harness.sweep import space as search

DIABETES = REPO / "jobs" / "diabetes_mlp.yaml"


def _points_printed(stdout: str) -> list[str]:
    return re.findall(r"^\s+\d+\s+(\S+)$", stdout, re.M)


def test_grid_is_every_combination_in_the_order_given():
    space = search.build_space(["training.learning_rate=1e-3,3e-4", "data.val_fraction=0.2,0.3"],
                               [], None, None)
    points = search.points(space)
    assert points == [{"training.learning_rate": 1e-3, "data.val_fraction": 0.2},
                      {"training.learning_rate": 1e-3, "data.val_fraction": 0.3},
                      {"training.learning_rate": 3e-4, "data.val_fraction": 0.2},
                      {"training.learning_rate": 3e-4, "data.val_fraction": 0.3}]
    names = search.short_names(space.varied)
    assert [search.point_name(p, names) for p in points][2] == "lr=0.0003,val_fraction=0.2"
    assert space.seed is None  # nothing random: nothing to seed


def test_random_draws_stay_in_their_intervals_and_integers_stay_integers():
    space = search.build_space([], ["training.learning_rate=1e-5:1e-2:log",
                                    "training.batch_size=8:64"], 200, 3)
    points = search.points(space)
    rates = [p["training.learning_rate"] for p in points]
    sizes = [p["training.batch_size"] for p in points]
    assert all(1e-5 <= r <= 1e-2 for r in rates) and all(isinstance(s, int) and 8 <= s <= 64 for s in sizes)
    # Log-uniform: about a third of the draws in each decade, not 90% in the top one.
    in_lowest_decade = sum(r < 1e-4 for r in rates)
    assert 40 <= in_lowest_decade <= 95, in_lowest_decade


def test_a_seeded_random_sweep_gives_the_same_points_twice(workdir):
    args = ("sweep", DIABETES, "--random", "4", "--range", "training.learning_rate=1e-5:1e-2:log",
            "--range", "training.batch_size=8:64", "--local", "--dry-run")
    first, second = (run_cli(*args, "--seed", "11", cwd=workdir) for _ in range(2))
    other = run_cli(*args, "--seed", "12", cwd=workdir)
    for done in (first, second, other):
        assert done.returncode == 0, done.stderr
    assert len(_points_printed(first.stdout)) == 4
    assert _points_printed(first.stdout) == _points_printed(second.stdout)
    assert _points_printed(first.stdout) != _points_printed(other.stdout)
    assert "seed 11" in first.stdout
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()  # a dry run


def test_a_sweep_without_a_seed_records_the_one_it_drew():
    space = search.build_space([], ["training.learning_rate=1e-4:1e-2:log"], 3, None)
    assert isinstance(space.seed, int) and f"seed {space.seed}" in space.describe()
    again = search.build_space([], ["training.learning_rate=1e-4:1e-2:log"], 3, space.seed)
    assert search.points(again) == search.points(space)


def test_one_bad_value_refuses_the_whole_sweep_and_writes_nothing(workdir):
    done = run_cli("sweep", DIABETES, "--grid", "training.learning_rate=1e-3,3e-4,-1",
                   "--grid", "training.batch_size=8,16", "--local", cwd=workdir)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "point 4 (lr=-1,bs=8)" in done.stderr and "training.learning_rate=-1.0" in done.stderr
    assert "(0, 10]" in done.stderr  # what is allowed
    assert list(workdir.iterdir()) == []  # no runs/, no mlflow.db


@pytest.mark.parametrize("args, words", [
    (["--grid", "resources.gpus_per_node=1,2"], "share one job array"),
    (["--grid", "training.engine=horovod,tf"], "share one job array"),
    (["--grid", "training.learning_rate"], "expected key=values"),
    (["--grid", "training.learning_rate=1e-3,,1e-4"], "an empty value"),
    (["--grid", "data.no_such_field=1,2"], "data.no_such_field: unknown key"),
    (["--range", "training.learning_rate=1e-5:1e-2:log"], "--range needs --random N"),
    (["--random", "3"], "give the intervals"),
    (["--random", "3", "--range", "training.learning_rate=0:1e-2:log"], "a log range needs low > 0"),
    (["--random", "3", "--range", "training.learning_rate=1e-2:1e-5"], "low < high"),
    ([], "nothing to vary"),
    (["--grid", "training.epochs=1,2", "--max-parallel", "0"], "--max-parallel 0"),
    (["--grid", "training.epochs=1,2", "--np", "300"], "--np 300"),
    (["--grid", "training.epochs=1,2", "--objective", "val_auroc"], "use NAME:max or NAME:min"),
    (["--grid", "training.epochs=1,2", "--objective", "test_auroc:max"], "never to choose it"),
])
def test_bad_sweep_flags_are_one_line_and_exit_2(workdir, capsys, args, words):
    from harness.cli import main
    assert main(["sweep", str(DIABETES), "--local", *args]) == 2  # in-process: the same contract
    err = capsys.readouterr().err
    assert words in err and err.strip().count("\n") == 0, err
    assert list(workdir.iterdir()) == []


def test_the_objective_ranks_finished_points_its_way_and_is_named_in_the_summary():
    from harness.sweep import objective, summary
    rows = [{"point": 0, "name": "lr=1e-3", "status": "FINISHED", "best_val_loss": 0.50,
             "val_auroc": 0.91, "best_epoch": 7, "run_id": "a", "failure": ""},
            {"point": 1, "name": "lr=1e-2", "status": "FINISHED", "best_val_loss": 0.45,
             "val_auroc": 0.88, "best_epoch": 3, "run_id": "b", "failure": ""},
            {"point": 2, "name": "lr=1e-1", "status": "FAILED", "best_val_loss": 0.10,
             "val_auroc": 0.99, "best_epoch": 1, "run_id": "c", "failure": "diverged"},
            {"point": 3, "name": "lr=3e-1", "status": "FINISHED", "best_val_loss": float("nan"),
             "val_auroc": None, "best_epoch": None, "run_id": "d", "failure": ""}]
    assert objective.Objective().best(rows)["point"] == 1  # best_val_loss, lowest: the default
    by_auroc = objective.parse("val_auroc:max")
    assert by_auroc.best(rows)["point"] == 0  # the failed point's 0.99 never counts
    record = {"sweep_id": "s", "objective": by_auroc.describe(), "varied": ["training.learning_rate"]}
    lines = summary.summary_lines(record, rows, by_auroc.best(rows))
    assert "best: point 0 (lr=1e-3) val_auroc 0.9100, run a" in lines
    assert "val_auroc" in summary.columns(record, rows)
    assert objective.Objective.of_record({}) == objective.Objective()  # older points files


def test_sqlite_is_refused_when_points_may_write_it_from_several_nodes(workdir, capsys):
    """lars's gtx1050ti partition has 7 nodes: two points at once may land on two of them."""
    from harness.cli import main
    args = ["sweep", str(DIABETES), "--grid", "training.learning_rate=1e-3,1e-2", "--cluster", "lars",
            "--partition", "gtx1050ti"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a local SQLite file is refused" in err and "7 nodes" in err and "--max-parallel 1" in err
    assert list(workdir.iterdir()) == []


def test_summarize_names_what_it_could_not_find(workdir):
    done = run_cli("sweep", "--summarize", "no-such-sweep", cwd=workdir)
    assert done.returncode == 2 and "sweep 'no-such-sweep': not found" in done.stderr


def test_the_array_script_runs_every_point_from_the_manifest(tmp_path):
    from slurm.cluster import load_cluster
    from slurm.render import JobArray, parse_sbatch_options, render_sbatch
    from harness.spec.loader import load_spec
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml")
    launch = tmp_path / "launch.json"
    script = render_sbatch(spec, load_cluster("lars"), REPO, tmp_path, launch, "http://head:5000",
                           array=JobArray(12, 3))
    options = parse_sbatch_options(script)
    assert options["array"] == "0-11%3"
    assert options["output"].endswith("%x-%A_%a.out") and options["error"].endswith("%x-%A_%a.err")
    # No index on the line: each task's SLURM_ARRAY_TASK_ID names its point in the manifest.
    assert script.count(f"-m harness.runtime.worker --manifest {launch} &\n") == 1
    assert f"-m harness.runtime.prepare --manifest {launch}\n" in script
    assert "requeue" in options  # each task requeues like a single job
    assert "scontrol requeue \"$SLURM_JOB_ID\"" in script  # the task's own id, not the array's


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, pima_csv, mlflow_server):
    """One real local sweep (two points side by side) into the real server, for the tests below."""
    folder = tmp_path_factory.mktemp("local-sweep")
    done = run_cli("sweep", DIABETES, "--grid", "training.learning_rate=0.001,0.01",
                   "--set", f"data.csv={pima_csv}", "--set", "training.epochs=3",
                   "--set", "tracking.experiment=t-sweep-local", "--local", "--max-parallel", "2",
                   cwd=folder, env={"MLFLOW_TRACKING_URI": mlflow_server.url})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("t-sweep-local")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("harness.kind") == "hyperparameter-sweep")
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.run_name)
    assert len(runs) == 3
    return done, folder, client, parent, children


@pytest.mark.multiproc
@pytest.mark.tracking
def test_local_sweep_two_at_a_time_logs_a_parent_with_a_child_per_point(local_sweep):
    done, folder, client, parent, children = local_sweep
    # Side by side: both started before either finished.
    events = re.findall(r"point (\d) \(\S+\) (started|finished)", done.stdout)
    assert [e[1] for e in events[:2]] == ["started", "started"], events
    assert parent.info.status == "FINISHED"
    assert [r.info.run_name for r in children] == ["lr=0.001", "lr=0.01"]
    for child in children:  # the same parameter names across children: the UI compares them
        assert child.info.status == "FINISHED"
        assert float(child.data.params["spec.training.learning_rate"]) == float(child.info.run_name[3:])
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss")) == [0, 1, 2]
    assert parent.data.params["sweep.points"] == "2" and "grid training.learning_rate" in \
        parent.data.params["sweep.space"]
    best = min(children, key=lambda r: r.data.metrics["best_val_loss"])
    assert parent.data.tags["sweep.best_run_id"] == best.info.run_id
    assert [c for c in children if c.data.tags.get("sweep.best")] == [best]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/results.csv", "sweep/results.html", "sweep/val_loss_all_points.png",
                         "sweep/objective_vs_training_learning_rate.png"}
    table = _results(client, parent.info.run_id, folder)
    assert [row["name"] for row in table] == ["lr=0.001", "lr=0.01"]
    for row, child in zip(table, children):
        assert row["status"] == "FINISHED" and row["run_id"] == child.info.run_id
        assert math.isclose(float(row["best_val_loss"]), child.data.metrics["best_val_loss"])
        assert row["test_accuracy"] and float(row["train_s"]) > 0 and float(row["gpu_hours"]) > 0
    assert "best: point" in done.stdout


@pytest.mark.multiproc
@pytest.mark.tracking
def test_mlflow_ui_shows_the_children_under_the_parent_and_compares_them(local_sweep, mlflow_server,
                                                                        tmp_path_factory):
    """In a real headless Chromium: the runs table nests the points under the sweep, a point's
    page names its parent, and MLflow's own comparison plots the varied value across points."""
    from test_browser import _browse, _chromium
    chromium = _chromium()
    _, _, _, parent, children = local_sweep
    profile = tmp_path_factory.mktemp("chromium-sweep")
    exp = parent.info.experiment_id
    ids = ",".join(f'"{c.info.run_id}"' for c in children)
    pages = {
        f"{mlflow_server.url}/#/experiments/{exp}/runs":
            [parent.info.run_name, "ag-grid-expanders-visible"],  # the parent row has an expander
        f"{mlflow_server.url}/#/experiments/{exp}/runs/{children[0].info.run_id}":
            ["Parent run", parent.info.run_name, children[0].info.run_name],
        f"{mlflow_server.url}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp}\"]":
            ["Parallel Coordinates", "spec.training.learning_rate", "lr=0.001", "lr=0.01"],
    }
    for url, words in pages.items():
        for attempt in range(3):  # a cold server answers the UI's first requests slowly
            dom = _browse(chromium, url, profile, "--dump-dom", height=3000).stdout
            if all(word in dom for word in words):
                break
            time.sleep(3)
        missing = [word for word in words if word not in dom]
        assert not missing, f"{missing} not in the page {url}"


def _results(client, run_id: str, folder: Path) -> list[dict]:
    path = client.download_artifacts(run_id, "sweep/results.csv", str(folder))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def results_of(client, run_id, folder) -> list[dict]:
    """For the SLURM test: the parent's table, as a physicist downloads it."""
    return _results(client, run_id, folder)


def points_file_of(workdir: Path) -> dict:
    return json.loads(next(workdir.glob("runs/*/sweeps/*/points.json")).read_text())
