"""The MLflow UI, in a real headless Chromium: the run's loss and val_loss charts, and the links
the harness prints open the Model training view in a browser that has never opened MLflow."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
from mlflow import MlflowClient

from conftest import REPO, run_cli

pytestmark = pytest.mark.tracking
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("HARNESS_REQUIRE_ALL"):
            pytest.fail("chromium is required in CI (scripts/test.sh installs Debian's chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium chromium-driver)")
    return path


def _browse(chromium, url, profile, *action, height=8000) -> subprocess.CompletedProcess:
    # A tall window: the UI only renders the charts that are on screen.
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--window-size=1400,{height}", "--virtual-time-budget=30000", *action, url],
                          capture_output=True, text=True, timeout=180)


def test_ui_shows_the_runs_loss_curves(workdir, pima_csv, mlflow_server, tmp_path_factory):
    chromium = _chromium()
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "t-browser"}
    result = run_cli("run", REPO / "jobs" / "diabetes_mlp.yaml", "--np", 1, "--set", f"data.csv={pima_csv}",
                     "--set", "training.epochs=3", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("t-browser")
    run = client.search_runs([exp.experiment_id])[0]
    url = f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics"
    profile = tmp_path_factory.mktemp("chromium-profile")
    charts = ("diabetes_mlp (loss)", "diabetes_mlp (val_loss)", "(generalization_gap)")
    for attempt in range(3):  # a cold server answers the UI's first requests slowly
        dom = _browse(chromium, url, profile, "--dump-dom").stdout
        if all(chart in dom for chart in charts):
            break
        time.sleep(5)
    for chart in charts:
        assert chart in dom, f"chart {chart!r} not in the rendered page"
    shot = workdir / "mlflow-ui.png"
    _browse(chromium, url, profile, f"--screenshot={shot}", height=1000)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # The link the run printed, and the one `harness report` prints, each in a fresh profile.
    printed = re.search(r"tracking: MLflow run (\w+): (\S+)", result.stdout)
    assert printed and printed.group(1) == run.info.run_id, result.stdout[-2000:]
    report = run_cli("report", run.info.run_id, cwd=workdir, env=env)
    reported = re.search(r"^view: (\S+)$", report.stdout, re.M)
    assert reported and reported.group(1) == printed.group(2), report.stdout[-1000:]
    dom = _dom_with(chromium, printed.group(2), tmp_path_factory.mktemp("fresh-profile"),
                    [run.info.run_name] + list(MODEL_TRAINING_VIEW))
    assert_model_training_view(dom)


# The UI's navigation in each view (MLflow 3.17): Model training lists the model registry,
# GenAI lists judges, prompts and agent versions instead.
MODEL_TRAINING_VIEW = ("Model registry",)
GENAI_VIEW = ("Judges", "Agent versions", "Prompts &amp; versions")


def _dom_with(chromium, url, profile, words, attempts=3) -> str:
    for attempt in range(attempts):  # a cold server answers the UI's first requests slowly
        dom = _browse(chromium, url, profile, "--dump-dom", height=2000).stdout
        if all(word in dom for word in words):
            break
        time.sleep(3)
    return dom


def assert_model_training_view(dom: str) -> None:
    missing = [w for w in MODEL_TRAINING_VIEW if w not in dom]
    genai = [w for w in GENAI_VIEW if w in dom]
    assert not missing and not genai, f"not the Model training view: {missing} missing, {genai} shown"
