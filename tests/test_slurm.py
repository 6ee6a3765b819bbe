"""`harness submit` and `harness status` against a real one-node SLURM (slurm/dev/).

The jobs are real: sbatch runs the rendered script, srun --mpi=pmix starts two
Horovod ranks over MPI (or, for the tf engine, srun starts two TensorFlow workers
that find each other through SlurmClusterResolver), and they log into a real
mlflow server.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, on_engine, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]
DIABETES = REPO / "jobs" / "diabetes_mlp.yaml"


def _submit(slurm, workdir, pima_csv, uri, experiment, *extra, cluster_env=True, hold=None,
            verb="submit"):
    """``harness submit`` of the diabetes job on the dev cluster.  ``hold``: the epoch after which
    the job waits for the test's signal (tests/… never race a job to its end)."""
    env = dict(slurm.env, MLFLOW_TRACKING_URI=uri) if uri else dict(slurm.env)
    if not cluster_env:
        env.pop("HARNESS_CLUSTER")
    if hold is not None:
        env["HARNESS_HOLD_AFTER_EPOCH"] = str(hold)
    return run_cli(verb, DIABETES, "--partition", "debug", "--gpus-per-node", "2",
                   "--set", f"data.csv={pima_csv}", "--set", f"tracking.experiment={experiment}",
                   *extra, cwd=workdir, env=env, timeout=120)


def _job_id(done) -> str:
    assert done.returncode == 0, done.stderr
    return re.search(r"submitted job (\d+)", done.stdout).group(1)


def _log(workdir: Path, job_id: str, stream: str = "out") -> str:
    path = workdir / "runs" / "diabetes_mlp" / "slurm" / f"diabetes_mlp-{job_id}.{stream}"
    return path.read_text() if path.exists() else ""


def _wait_for_line(workdir, job_id, pattern, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, _log(workdir, job_id)):
            return
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not in job {job_id}'s log after {timeout_s} s:\n{_log(workdir, job_id)}")


def _only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _steps(client, run_id, key="loss") -> list:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _requeued_once_then_completed(slurm, workdir, job_id: str, after: str = "") -> str:
    """Wait for the requeue, release SLURM's hold on the job (about two minutes after a requeue,
    too long for a test) once ``after`` is done, and return the log of the completed job."""
    deadline = time.monotonic() + 120
    while slurm.job(job_id).get("Restarts") != "1":
        assert time.monotonic() < deadline, f"job {job_id} did not requeue: {slurm.job(job_id)}"
        time.sleep(0.5)
    # slurmd revokes the first attempt's credential when it ends, to the second: an attempt
    # started within that second is killed ("Job credential revoked") and the job ends FAILED
    # (seen in CI).  SLURM's own requeue hold is minutes; the test's shortcut waits 2 s.
    time.sleep(2)
    if after:
        slurm.wait_state(after, {"COMPLETED", "FAILED", "CANCELLED"}, 120)
    slurm.cmd("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    info = slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    log = _log(workdir, job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", \
        log + "\n--- stderr\n" + _log(workdir, job_id, "err")[-3000:]
    return log


def _assert_one_requeue_on_one_axis(client, run, log: str, saved: int, epochs: int) -> None:
    """A job stopped by the warning after epoch ``saved`` (its checkpoint), requeued once and
    resumed: the stop landed in the next batch, every epoch is logged once, the run says where it
    resumed and in which epoch it was preempted, and the telemetry of both attempts lies on one
    axis (steps continue after the requeue; none repeats)."""
    stopped = re.search(r"SIGUSR2: stopped during epoch (\d+) on every rank, [\d.]+ s after the "
                        r"signal; checkpoint at epoch (\d+)", log)
    assert stopped, log
    interrupted = int(stopped.group(1))
    assert int(stopped.group(2)) == saved and interrupted == saved + 1  # no finished epoch lost
    assert f"resuming at epoch {saved + 1}" in log
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    for key in ("loss", "val_loss", "generalization_gap"):
        assert _steps(client, run_id, key) == list(range(epochs)), key  # each epoch once
    assert run.data.tags["resumed_from_epoch"] == str(saved)
    preempted = client.get_metric_history(run_id, "slurm/preempted_in_epoch")
    assert [(m.step, m.value) for m in preempted] == [(0, interrupted)]
    cpu = next(k for k in run.data.metrics if k.endswith("/cpu_utilization_percentage"))
    samples = sorted(client.get_metric_history(run_id, cpu), key=lambda m: m.timestamp)
    steps = [m.step for m in samples]
    assert len(steps) == len(set(steps)) and steps == sorted(steps), steps
    requeued_at = max(m.timestamp for m in client.get_metric_history(run_id, "loss")
                      if m.step == saved - 1)  # the first attempt's last logged epoch
    assert min(m.step for m in samples if m.timestamp > requeued_at + 10_000) > max(
        m.step for m in samples if m.timestamp <= requeued_at)


def test_scancel_without_requeue_keeps_the_checkpoint_and_marks_the_run_killed(
        slurm, workdir, pima_csv, mlflow_server):
    done = _submit(slurm, workdir, pima_csv, mlflow_server.url, "slurm-cancel",
                   "--set", "training.epochs=30",
                   "--set", "checkpoint.every_epochs=1", hold=2)
    job_id = _job_id(done)
    _wait_for_line(workdir, job_id, r"hold: after epoch 2")
    slurm.cmd("scancel", job_id)
    info = slurm.wait_state(job_id, {"CANCELLED", "COMPLETED", "FAILED"}, 120)
    assert info["JobState"] == "CANCELLED"

    pointer = json.loads((workdir / "runs" / "diabetes_mlp" / "checkpoints" / "latest.json").read_text())
    assert pointer["epoch"] == 2
    # scancel sends SIGTERM: the ranks stopped together and the last finished epoch is on disk.
    stopped = re.search(r"SIGTERM: stopped during epoch (\d+) on every rank, ([\d.]+) s after",
                        _log(workdir, job_id))
    assert stopped, _log(workdir, job_id)
    assert pointer["epoch"] == int(stopped.group(1)) - 1 and float(stopped.group(2)) < 15
    deadline = time.monotonic() + 30
    while (_only_run(mlflow_server.url, "slurm-cancel")[1].info.status == "RUNNING"
           and time.monotonic() < deadline):
        time.sleep(1)
    client, run = _only_run(mlflow_server.url, "slurm-cancel")
    assert run.info.status == "KILLED"
    assert _steps(client, run.info.run_id)[: pointer["epoch"]] == list(range(pointer["epoch"]))


@pytest.mark.tracking
def test_a_job_submitted_by_a_user_logs_as_that_user(slurm, workdir, pima_csv, tmp_path):
    """A server with users (--auth): Alice submits from her home, which holds her
    ~/.mlflow/credentials; the job reads them on the node and its run is hers.  Neither the batch
    script nor the job's logs hold her password."""
    import signal
    import socket
    from tracking import auth, server
    home = tmp_path / "tracking-home"
    home.mkdir()
    port = server.free_port()
    url = f"http://{socket.gethostname()}:{port}"
    proc = server.start(f"sqlite:///{home / 'mlflow.db'}", "0.0.0.0", port, home / "artifacts",
                        auth=True, log=home / "server.log", auth_config=auth.prepare(home))
    try:
        server.wait_ready(url, proc)
        credentials = tmp_path / "alice" / ".mlflow" / "credentials"
        credentials.parent.mkdir(parents=True)
        credentials.write_text(auth.add_user(home, url, "alice"))
        credentials.chmod(0o600)
        password = auth.read_credentials(credentials)[1]
        done = run_cli("submit", DIABETES, "--partition", "debug", "--gpus-per-node", "1",
                       "--set", f"data.csv={pima_csv}", "--set", "tracking.experiment=alice-slurm",
                       "--set", "training.epochs=2", cwd=workdir, timeout=120,
                       env=dict(slurm.env, MLFLOW_TRACKING_URI=url, HOME=str(credentials.parents[1])))
        job_id = _job_id(done)
        info = slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, 300)
        assert info["JobState"] == "COMPLETED", _log(workdir, job_id, "err")[-3000:]
        admin, admin_password = auth.read_credentials(auth.admin_credentials(home))
        with auth.as_user(admin, admin_password):
            from mlflow.server import get_app_client
            client = MlflowClient(url)
            experiment = client.get_experiment_by_name("alice-slurm")
            [run] = client.search_runs([experiment.experiment_id])
            owner = get_app_client("basic-auth", tracking_uri=url).get_user_permission(
                "alice", "experiment", experiment.experiment_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.user"] == "alice"
        assert run.data.tags["slurm.job_id"] == job_id and owner.permission == "MANAGE"
        written = [p for p in (workdir / "runs").rglob("*") if p.is_file()]
        assert any(p.suffix == ".sbatch" for p in written), written
        for path in written:  # the batch script, the launch, the job's own logs
            assert password.encode() not in path.read_bytes(), path
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def _lars_two_nodes():
    return ["--cluster", "lars", "--partition", "rtx2080ti", "--nodes", "2", "--gpus-per-node", "1"]


BAD_SUBMISSIONS = [
    (["--gpus-per-node", str(os.cpu_count() + 1)], "GPUs per node; use 1..", True),
    (["--time", "3-00:00:00"], "allows at most 1-00:00:00", True),
    (["--time", "00:02:00"], "needs at least 3 minutes", True),
    (["--partition", "gpu"], "choose with --partition", True),
    (["--set", "data.csv=/nonexistent/pima.csv"], "file not found", True),
    (["--set", "training.epochs=0"], "training.epochs", True),
    (["--time", "soon"], "resources.time='soon'", True),
    (_lars_two_nodes(), "refused for a 2-node job", False),  # SQLite default, two nodes
]


@pytest.mark.parametrize("args,words,dev_cluster", BAD_SUBMISSIONS,
                         ids=["too-many-tasks", "time-too-long", "time-too-short", "no-such-partition",
                              "missing-data", "bad-field", "bad-time", "sqlite-multinode"])
def test_bad_submissions_exit_2_and_queue_nothing(slurm, workdir, pima_csv, args, words, dev_cluster):
    before = slurm.queue()
    done = _submit(slurm, workdir, pima_csv, "", "slurm-bad", *args, cluster_env=dev_cluster)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr
    assert slurm.queue() == before
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()


def test_a_job_slurm_itself_refuses_is_caught_by_test_only(slurm, workdir, pima_csv, tmp_path):
    # A profile that promises more cores than the node has: our checks pass, sbatch --test-only not.
    profile = Path(slurm.env["HARNESS_CLUSTER"]).read_text()
    profile = re.sub(r"gpus_per_node: \d+", "gpus_per_node: 64", profile)
    profile = re.sub(r"cpus_per_node: \d+", "cpus_per_node: 64", profile)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(profile)
    before = slurm.queue()
    done = _submit(slurm, workdir, pima_csv, "", "slurm-bad", "--gpus-per-node", "16",
                   "--cluster", str(wrong))
    assert done.returncode == 2 and "sbatch --test-only refused" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and slurm.queue() == before
    assert not (workdir / "runs").exists()


def test_existing_checkpoint_needs_resume(slurm, workdir, pima_csv):
    ckpt = workdir / "runs" / "diabetes_mlp" / "checkpoints"
    (ckpt / "epoch-00002").mkdir(parents=True)
    (ckpt / "epoch-00002" / "meta.json").write_text(json.dumps({"format": 1, "epoch": 2}))
    (ckpt / "latest.json").write_text(json.dumps({"format": 1, "checkpoint": "epoch-00002", "epoch": 2}))
    done = _submit(slurm, workdir, pima_csv, "", "slurm-bad")
    assert done.returncode == 2 and "pass --resume" in done.stderr, done.stderr
    assert not (workdir / "runs" / "diabetes_mlp" / "slurm").exists()


def test_dry_run_prints_the_script_and_submits_nothing(slurm, workdir, pima_csv):
    before = slurm.queue()
    done = _submit(slurm, workdir, pima_csv, "", "slurm-dry", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash") and "SLURM would accept it" in done.stderr
    assert slurm.queue() == before and not (workdir / "runs").exists()


@pytest.mark.slow
def test_scale_on_slurm_runs_one_job_per_size_into_child_runs(slurm, workdir):
    done = run_cli("scale", REPO / "jobs" / "synthetic.yaml", "--gpus", "1,2", "--partition", "debug",
                   "--repeats", "2", "--set", "data.samples_per_epoch=512", cwd=workdir,
                   env=slurm.env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = dict((int(n), j) for n, j in re.findall(r"scale: N=(\d+): job (\d+)", done.stdout))
    assert sorted(jobs) == [1, 2]
    assert all(slurm.job(j).get("JobState") == "COMPLETED" for j in jobs.values())
    # afterany: the 2-process job started only once the 1-process job had ended
    first, second = slurm.job(jobs[1]), slurm.job(jobs[2])
    assert second["StartTime"] >= first["EndTime"], (first["EndTime"], second["StartTime"])
    assert re.search(r"^\s+2\s+[\d.]+\s+.*\d+%\s+\d+%\s+\d+%$", done.stdout, re.M), done.stdout

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("synthetic")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'scale-sweep'")[0]
    assert parent.data.params["where"] == "slurm"
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_size = {c.data.tags["scale.processes"]: c for c in children}
    assert sorted(by_size) == ["1", "2"]
    assert {by_size[str(n)].data.tags["slurm.job_id"] for n in (1, 2)} == set(jobs.values())
    # Each size ran its own frozen spec from epoch 1 (the sizes are queued within one second; once
    # they shared one frozen spec and N=2 resumed N=1's finished checkpoint).
    for n, job in jobs.items():
        log = (workdir / "runs" / "synthetic" / "slurm" / f"synthetic-{job}.out").read_text()
        assert f"synthetic: {n} process(es) on CPU, starting at epoch 1" in log, log[-1500:]


@pytest.mark.slow
def test_a_real_preemption_requeues_and_resumes_with_every_epoch_once(slurm, workdir, pima_csv,
                                                                     mlflow_server, engine):
    """A two-rank job as a user submits it, reviewed first with `harness render`, preempted as
    SLURM preempts: a job in a higher-tier partition takes the node; the harness job gets
    SIGTERM (not the warning), has GraceTime to leave its last epoch on disk, SLURM requeues it,
    and it resumes into the run created at submit, which ends FINISHED with every epoch once.
    On Horovod the steps run 4 to a call (training.steps_per_execution): the job is held as
    the call holding epoch 4's fifth step begins, the signal comes while it is held, and every
    rank stops after that call, at the same batch."""
    # A copy of the job the user goes on editing while the job runs: the requeued job must still
    # run what was submitted, and say that the original changed.
    mine = workdir / "mine"
    mine.mkdir()
    for name in ("diabetes_mlp.py", "diabetes_mlp.yaml"):
        shutil.copy(DIABETES.parent / name, mine / name)
    per_call = {"horovod": 4, "tf": 1}[engine]  # the tf engine runs one step a call on 2 workers
    job = [mine / "diabetes_mlp.yaml", "--partition", "debug", "--gpus-per-node", "2",
           "--set", f"data.csv={pima_csv}", "--set", "training.epochs=8",
           "--set", "checkpoint.every_epochs=100",  # only the stop itself checkpoints
           "--set", f"training.steps_per_execution={per_call}",
           "--set", f"tracking.experiment=slurm-real-preempt-{engine}", *on_engine(engine)]
    # 606 training rows, 2 ranks, batch 10: 31 steps an epoch; step 98 is epoch 4's batch 4.
    env = dict(slurm.env, MLFLOW_TRACKING_URI=mlflow_server.url, HARNESS_HOLD_AT_STEP="98")
    rendered = run_cli("render", *job, cwd=workdir, env=env)  # what a user reviews first
    assert rendered.returncode == 0, rendered.stderr
    done = run_cli("submit", *job, cwd=workdir, env=env)
    job_id = _job_id(done)
    run_id = re.search(rf"run (\w+) tagged slurm.job_id={job_id}", done.stdout).group(1)
    script = workdir / "runs" / "diabetes_mlp" / "slurm" / f"diabetes_mlp-{job_id}.sbatch"
    launch = {"horovod": "srun --mpi=pmix", "tf": "srun --mpi=none"}[engine]
    assert launch in script.read_text()
    assert rendered.stdout == script.read_text()  # what render shows is what submit queued
    _wait_for_line(workdir, job_id, r"hold: at step 98")  # it waits there for SLURM
    (mine / "diabetes_mlp.yaml").write_text("name: broken\n")
    (mine / "diabetes_mlp.py").write_text("raise SystemExit('edited after submission')\n")
    urgent = slurm.cmd("sbatch", "--parsable", "--partition=urgent", f"--ntasks={os.cpu_count()}",
                       "--mem=100M", "--output=/dev/null", "--wrap", "sleep 3").strip()
    assert urgent.isdigit(), urgent
    log = _requeued_once_then_completed(slurm, workdir, job_id, after=urgent)

    stopped = re.search(r"SIGTERM: stopped during epoch (\d+) on every rank, ([\d.]+) s after "
                        r"the signal; checkpoint at epoch (\d+)", log)
    assert stopped, log
    interrupted, seconds, saved = int(stopped.group(1)), float(stopped.group(2)), int(stopped.group(3))
    assert saved == interrupted - 1 == 3 and seconds < 30  # within GraceTime, no finished epoch lost
    assert f"resuming at epoch {saved + 1}" in log
    # Both ranks stopped after the held call, before the same batch.
    stops = re.findall(r"rank (\d): stopped before batch (\d+) of epoch (\d+)", log)
    assert sorted(stops) == [("0", str(4 + per_call), "4"), ("1", str(4 + per_call), "4")], stops
    assert f"note: {mine / 'diabetes_mlp.py'} changed" in log  # said, and the submitted copy ran

    assert "2 process(es)" in log and "weights identical on all 2 ranks" in log

    client, run = _only_run(mlflow_server.url, f"slurm-real-preempt-{engine}")
    assert run.info.run_id == run_id  # created at submit, before the job started
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert run.data.params["engine"] == engine and run.data.params["processes"] == "2"
    assert run.data.tags["slurm.job_id"] == job_id and run.data.tags["slurm.restart_count"] == "1"
    assert run.data.tags["harness.job_changed_since_submit"] == "true"
    for key in ("loss", "val_loss", "generalization_gap"):
        assert _steps(client, run.info.run_id, key) == list(range(8)), key  # each epoch once
    signal_to_stop = client.get_metric_history(run.info.run_id, "slurm/stop_after_signal_s")
    assert [m.step for m in signal_to_stop] == [0]
    print(f"{engine}: signal-to-stop {seconds:.1f} s (GraceTime 30 s)")  # the README quotes it

    status = run_cli("status", job_id, cwd=workdir, env=slurm.env)
    assert status.returncode == 0, status.stderr
    assert "COMPLETED" in status.stdout and "epoch 8/8" in status.stdout


def test_a_two_rank_lens_job_with_an_empty_cache_simulates_once(slurm, workdir):
    """The batch script prepares the job's data before the step: one simulation, then both
    ranks read the cache (before, every rank of a submitted job simulated the same set)."""
    done = run_cli("submit", REPO / "jobs" / "lensfinder_cnn.yaml", "--partition", "debug",
                   "--gpus-per-node", "2", "--set", "data.n_images=200", "--set", "data.num_pix=24",
                   "--set", "data.test_lenses=20", "--set", "data.test_nonlenses=40",
                   "--set", "data.cache_dir=lens-cache", "--set", "training.epochs=1",
                   "--set", "training.warmup_epochs=0", cwd=workdir, env=slurm.env, timeout=120)
    job_id = re.search(r"submitted job (\d+)", done.stdout).group(1) if done.returncode == 0 else None
    assert job_id, done.stderr
    info = slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    logs = workdir / "runs" / "lensfinder_cnn" / "slurm"
    text = (logs / f"lensfinder_cnn-{job_id}.out").read_text() + (
        logs / f"lensfinder_cnn-{job_id}.err").read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert text.count("simulating 260 DES-like 24x24") == 1, text[-3000:]
    assert text.index("prepare: lensfinder_cnn data ready") < text.index("2 process(es)")
    assert len(list((workdir / "lens-cache").glob("lenses-24px-seed2026-*/*.npz"))) == 3  # a chunk a split


def test_each_rank_gets_the_cpus_the_script_asked_for(slurm, workdir, pima_csv, tmp_path):
    """srun no longer inherits --cpus-per-task from the allocation (SLURM >= 22.05); with tasks
    bound to CPUs (the dev cluster's task/affinity) a rank sees what srun gave it."""
    cpus = os.cpu_count()
    profile = re.sub(r"gpus_per_node: \d+", "gpus_per_node: 1",
                     Path(slurm.env["HARNESS_CLUSTER"]).read_text())  # one rank, all the cores
    (tmp_path / "one-rank.yaml").write_text(profile)
    done = _submit(slurm, workdir, pima_csv, "", "slurm-cpus", "--gpus-per-node", "1",
                   "--set", "training.epochs=1", "--cluster", str(tmp_path / "one-rank.yaml"))
    job_id = _job_id(done)
    info = slurm.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 300)
    assert info["JobState"] == "COMPLETED", _log(workdir, job_id) + _log(workdir, job_id, "err")
    _, run = _only_run(f"sqlite:///{workdir / 'mlflow.db'}", "slurm-cpus")
    assert run.data.params["cpus.omp_num_threads"] == str(cpus)
    assert run.data.params["cpus.per_process"] == str(cpus)  # 1 without srun --cpus-per-task


def _max_running_tasks(slurm, array: str, stop: threading.Event, seen: list) -> None:
    """How many of the array's tasks SLURM runs at once, sampled until ``stop``."""
    while not stop.is_set():
        running = slurm.cmd("squeue", "-h", "-r", "-j", array, "-t", "RUNNING", "-o", "%i").split()
        seen.append(len(running))
        time.sleep(0.3)


@pytest.mark.slow
def test_a_sweep_is_one_job_array_a_failed_point_and_a_preempted_task_do_not_stop_it(
        slurm, workdir, pima_csv, mlflow_server):
    """Four versions of a dataset, one of them cut short by the acquisition (the point that
    fails); two points at a time; the first point gets SLURM's preemption warning (USR2), stops,
    checkpoints, requeues and resumes into its own run.  Checkpoints come every 4 epochs, so the
    stop after epoch 2 also exercises the epoch boundary kept in memory."""
    for name in ("run1.csv", "run2.csv", "run3.csv"):
        shutil.copy(pima_csv, workdir / name)
    (workdir / "run4.csv").write_text("".join(pima_csv.read_text().splitlines(True)[:20]))
    release = workdir / "release"  # every point holds after epoch 2 until this file appears
    started = time.monotonic()
    done = run_cli("sweep", DIABETES, "--grid", "data.csv=run1.csv,run2.csv,run3.csv,run4.csv",
                   "--partition", "debug", "--gpus-per-node", "1", "--max-parallel", "2",
                   "--set", "training.epochs=6",
                   "--set", "checkpoint.every_epochs=4",
                   "--set", "tracking.experiment=slurm-sweep", cwd=workdir,
                   env=dict(slurm.env, MLFLOW_TRACKING_URI=mlflow_server.url,
                            HARNESS_HOLD_AFTER_EPOCH="2", HARNESS_HOLD_RELEASE=str(release)),
                   timeout=120)
    assert done.returncode == 0, done.stderr
    array, summary_job = re.search(r"submitted job array (\d+): 4 points, at most 2 at once; "
                                   r"summary job (\d+)", done.stdout).groups()
    script = next(workdir.glob("runs/diabetes_mlp/sweeps/*/sweep.sbatch")).read_text()
    assert "#SBATCH --array=0-3%2" in script
    stop, running = threading.Event(), []
    sampler = threading.Thread(target=_max_running_tasks, args=(slurm, array, stop, running))
    sampler.start()
    try:
        _wait_for_line(workdir, f"{array}_0", r"hold: after epoch 2")
        # SLURM's warning.  SLURM 22.05 delivers it to an array task's batch shell, then answers
        # "Job can not be altered now, try again later" and scancel retries until killed: the
        # requeue below is the proof of delivery, not scancel's exit status.
        try:
            subprocess.run(["scancel", "--signal=USR2", "--batch", f"{array}_0"],
                           env=dict(os.environ, **slurm.env), capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _wait_for_line(workdir, f"{array}_0", r"SIGUSR2: stopped during epoch 3")
        release.touch()  # the other points go on
        log = _requeued_once_then_completed(slurm, workdir, f"{array}_0")
        slurm.wait_state(summary_job, {"COMPLETED", "FAILED", "CANCELLED"}, 300)
    finally:
        stop.set()
        sampler.join()
    print(f"4-point sweep on the dev SLURM: {time.monotonic() - started:.0f} s from submit to summary")
    assert max(running) == 2, running  # the limit held, and was used
    assert "resuming at epoch" in log

    points = json.loads(next(workdir.glob("runs/diabetes_mlp/sweeps/*/points.json")).read_text())
    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(points["parent_run_id"])
    assert parent.info.status == "FINISHED"  # one failed point does not fail the sweep
    children = {int(r.data.tags["sweep.point"]): r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(children) == [0, 1, 2, 3]
    assert [children[i].info.run_name for i in range(4)] == [f"csv=run{i}.csv" for i in range(1, 5)]
    assert {i: children[i].info.status for i in range(4)} == {0: "FINISHED", 1: "FINISHED",
                                                              2: "FINISHED", 3: "FAILED"}
    assert "rows: 19" in children[3].data.tags["failure_reason"]  # its own reason stays
    # The batch script's word after the failed step: which rank, where, how (srun's report).
    assert re.fullmatch(r"rank 0 on \S+ failed first \(exit code 2\); the other ranks were "
                        r"stopped by srun", children[3].data.tags["failure_first_rank"])
    # The preempted task resumed into its own child run: every epoch once, one restart.
    first = children[0]
    assert first.info.run_id == points["points"][0]["run_id"]
    assert first.data.tags["slurm.restart_count"] == "1"
    assert first.data.tags["slurm.array_job_id"] == array and first.data.tags["slurm.array_task_id"] == "0"
    _assert_one_requeue_on_one_axis(client, first, log, saved=2, epochs=6)
    # The batch shell's word (the task's own job id, not the array's)
    assert "harness: preempted; checkpoint written; requeueing job " in _log(workdir, f"{array}_0", "err")

    from test_sweep import results_of
    table = results_of(client, parent.info.run_id, workdir)
    assert [row["name"] for row in table] == [f"csv=run{i}.csv" for i in range(1, 5)]
    assert [row["status"] for row in table] == ["FINISHED"] * 3 + ["FAILED"]
    assert "rows: 19" in table[3]["failure"] and table[0]["best_val_loss"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {
        "sweep/results.csv", "sweep/results.html", "sweep/val_loss_all_points.png",
        "sweep/objective_vs_data_csv.png"}
    summary_log = next(workdir.glob(f"runs/diabetes_mlp/slurm/*-{summary_job}.out")).read_text()
    assert "failed: point 3 (csv=run4.csv)" in summary_log and "parent run" in summary_log

    status = run_cli("status", cwd=workdir, env=slurm.env)
    assert re.search(rf"{array}\s+diabetes_mlp\s+sweep of 4 points: 3 COMPLETED, 1 FAILED",
                     status.stdout), status.stdout
    detail = run_cli("status", array, cwd=workdir, env=slurm.env).stdout
    assert re.search(rf"{array}_0\s+csv=run1.csv\s+COMPLETED\s+run \w+ FINISHED: epoch 6/6", detail), detail
    assert re.search(rf"{array}_3\s+csv=run4.csv\s+FAILED", detail), detail
