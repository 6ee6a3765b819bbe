"""The lab's tracking server as a lab runs it: `harness tracking serve --store postgres --auth` on a
real PostgreSQL, reached by host name; users who may read but not touch each other's
experiments; a job that logs as whoever ran it; backups restored into a fresh server; an SQLite
store moved into PostgreSQL."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import HARNESS, REPO, run_cli
from tracking import server

pytestmark = pytest.mark.tracking


def _need_postgres() -> None:
    from tracking import postgres
    try:
        postgres.tool("initdb")
    except Exception:
        if os.environ.get("HARNESS_REQUIRE_ALL"):
            pytest.fail("PostgreSQL is required in CI (scripts/test.sh installs Debian's postgresql)")
        pytest.skip("no PostgreSQL on this machine (WITH_POSTGRES=1 make setup)")


class Lab:
    """`harness tracking serve` as its administrator starts it, in a home of its own."""

    def __init__(self, home: Path, *flags: str):
        self.home, self.flags = home, flags
        self.port = server.free_port("127.0.0.1")
        self.url = f"http://{socket.gethostname()}:{self.port}"  # as compute nodes reach it
        self.env = {"HARNESS_TRACKING_HOME": str(home)}

    def start(self) -> "Lab":
        self.log = open(self.home.parent / f"{self.home.name}-serve.log", "wb")
        self.proc = subprocess.Popen(
            [*HARNESS, "tracking", "serve", "--host", "0.0.0.0", "--port", str(self.port),
             *self.flags], env=dict(os.environ, **self.env), stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            server.wait_ready(self.url, self.proc, timeout_s=240)
        except BaseException:
            self.stop()  # its PostgreSQL too, and the cluster's folder
            raise
        return self

    @property
    def cluster(self):
        from tracking import postgres
        return postgres.Cluster(postgres.cluster_root(self.home))

    def stop(self) -> None:
        self.proc.terminate()  # as systemd or Ctrl-C would: the server, then its PostgreSQL
        self.proc.wait(timeout=120)
        self.log.close()
        alive = self.cluster.running()
        if alive:
            self.cluster.stop()
        if self.cluster.root != self.home / "postgres":  # run as root: not under the home
            shutil.rmtree(self.cluster.root, ignore_errors=True)
        assert not alive, "the server's PostgreSQL outlived it"

    def client(self, credentials: Path = None) -> MlflowClient:
        """A client as the user whose credentials file this is (the administrator by default)."""
        from tracking.auth import read_credentials
        user, password = read_credentials(credentials or self.home / "admin-credentials")
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
        return MlflowClient(self.url)

    def add_user(self, name: str, homes: Path) -> Path:
        """The administrator adds ``name``; the user saves what they were given in their home."""
        done = run_cli("tracking", "add-user", name, "--url", self.url, env=self.env)
        assert done.returncode == 0, done.stderr
        text = done.stdout[done.stdout.index("[mlflow]"):]
        credentials = homes / name / ".mlflow" / "credentials"
        credentials.parent.mkdir(parents=True)
        credentials.write_text(text)
        credentials.chmod(0o600)
        return credentials


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need_postgres()
    lab = Lab(tmp_path_factory.mktemp("lab") / "home", "--store", "postgres", "--auth").start()
    yield lab
    lab.stop()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)


@pytest.fixture(scope="module")
def users(lab, tmp_path_factory):
    homes = tmp_path_factory.mktemp("homes")
    return {name: lab.add_user(name, homes) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def alices_job(lab, users, tmp_path_factory):
    """Alice runs the diabetes job against the lab's server from her own home."""
    workdir = tmp_path_factory.mktemp("alice-work")
    env = {"HOME": str(users["alice"].parent.parent), "MLFLOW_TRACKING_URI": lab.url,
           "MLFLOW_EXPERIMENT_NAME": "alice-diabetes"}
    done = run_cli("run", REPO / "jobs" / "diabetes_mlp.yaml", "--np", 1,
                   "--set", "training.epochs=3", cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    admin = lab.client()
    experiment = admin.get_experiment_by_name("alice-diabetes")
    run = admin.search_runs([experiment.experiment_id])[0]
    return done, workdir, experiment, run


def test_server_runs_on_its_own_postgresql_with_several_workers(lab):
    log = (lab.home.parent / "home-serve.log").read_text()
    assert "backend postgresql://mlflow@/mlflow?host=" in log and "4 worker(s)" in log
    assert (lab.cluster.data / "PG_VERSION").is_file()
    import psutil
    postmaster = int((lab.cluster.data / "postmaster.pid").read_text().split()[0])
    family = {postmaster, *(c.pid for c in psutil.Process(postmaster).children(recursive=True))}
    listening = [c for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in family]
    assert listening == [], "the tracking store must listen on its socket only"
    assert (lab.cluster.socket_dir / ".s.PGSQL.5432").is_socket()
    assert oct((lab.home / "admin-credentials").stat().st_mode & 0o777) == "0o600"


def test_a_job_logs_as_the_user_who_ran_it_and_leaves_no_password_behind(lab, users, alices_job):
    from mlflow.server import get_app_client
    from tracking.auth import read_credentials
    done, workdir, experiment, run = alices_job
    assert run.data.tags["mlflow.user"] == "alice"
    lab.client()  # the administrator asks who manages the experiment the job created
    permission = get_app_client("basic-auth", tracking_uri=lab.url).get_user_permission(
        "alice", "experiment", experiment.experiment_id)
    assert permission.permission == "MANAGE"
    password = read_credentials(users["alice"])[1]
    assert password not in done.stdout + done.stderr
    for path in workdir.rglob("*"):  # the launch, its spec copy, checkpoints, logs
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert all(password not in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])


def test_users_read_each_others_runs_but_cannot_write_or_delete(lab, users, alices_job):
    _, _, experiment, run = alices_job
    bob = lab.client(users["bob"])
    assert bob.get_run(run.info.run_id).data.metrics["best_val_loss"] > 0  # READ by default
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        bob.log_metric(run.info.run_id, "vandalism", 1.0)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        bob.delete_experiment(experiment.experiment_id)
    anonymous = requests.get(f"{lab.url}/api/2.0/mlflow/experiments/search?max_results=1",
                             timeout=30)
    assert anonymous.status_code == 401


def test_a_job_into_someone_elses_experiment_is_refused_in_one_line(lab, users, alices_job,
                                                                    tmp_path):
    env = {"HOME": str(users["bob"].parent.parent), "MLFLOW_TRACKING_URI": lab.url,
           "MLFLOW_EXPERIMENT_NAME": "alice-diabetes"}
    done = run_cli("run", REPO / "jobs" / "diabetes_mlp.yaml", "--np", 1, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "user 'bob' may read it but not write to it" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_credentials_file_others_can_read_is_refused(lab, tmp_path):
    credentials = tmp_path / ".mlflow" / "credentials"
    credentials.parent.mkdir()
    credentials.write_text("[mlflow]\nmlflow_tracking_username = carol\n"
                           "mlflow_tracking_password = x\n")
    credentials.chmod(0o644)
    done = run_cli("run", REPO / "jobs" / "diabetes_mlp.yaml", "--np", 1, cwd=tmp_path,
                   env={"HOME": str(tmp_path), "MLFLOW_TRACKING_URI": lab.url})
    assert done.returncode == 2
    assert f"{credentials}: mode 644" in done.stderr and "chmod 600" in done.stderr


def _everything(client: MlflowClient) -> dict:
    """Every run of every experiment: its metrics' full histories, params, tags, artifacts."""
    def files(run_id, path=None):
        out = []
        for item in client.list_artifacts(run_id, path):
            out += files(run_id, item.path) if item.is_dir else [(item.path, item.file_size)]
        return out
    found = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            rid = run.info.run_id
            found[rid] = {
                "experiment": experiment.name, "params": run.data.params, "tags": run.data.tags,
                "metrics": {k: [(m.step, m.value) for m in client.get_metric_history(rid, k)]
                            for k in run.data.metrics},
                "artifacts": sorted(files(rid))}
    return found


def test_backup_while_serving_restores_into_a_fresh_server(lab, alices_job, tmp_path):
    dest = tmp_path / "backup"
    done = run_cli("tracking", "backup", dest, "--store", "postgres", env=lab.env)
    assert done.returncode == 0, done.stderr
    assert "runs" in done.stdout and oct(dest.stat().st_mode & 0o777) == "0o700"
    assert lab.client().get_run(alices_job[3].info.run_id)  # the server served on throughout
    before = _everything(lab.client())
    assert any(r["artifacts"] for r in before.values())

    fresh = Lab(tmp_path / "restored-home", "--store", "postgres", "--auth")
    done = run_cli("tracking", "restore", dest, "--store", "postgres", env=fresh.env)
    assert done.returncode == 0, done.stderr
    fresh.start()
    try:
        # The restored server knows the same administrator (restored with its user database).
        after = _everything(fresh.client(dest / "admin-credentials"))
    finally:
        fresh.stop()
    assert after == before


def test_sqlite_backup_while_a_writer_writes(mlflow_server, tmp_path):
    """The embedded store: SQLite's online backup, taken while the server takes writes."""
    client = MlflowClient(mlflow_server.url)
    run = client.create_run(client.create_experiment(f"backup-{time.time_ns()}")).info.run_id
    client.log_text(run, "kept", "notes/a.txt")
    stop = threading.Event()

    def write():
        step = 0
        while not stop.is_set():
            client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
            step += 1
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(2)
    dest = tmp_path / "backup"
    done = run_cli("tracking", "backup", dest, "--backend", f"sqlite:///{mlflow_server.root}/server.db",
                   "--artifacts", mlflow_server.root / "artifacts",
                   env={"HARNESS_TRACKING_HOME": str(tmp_path / "home")})
    stop.set()
    writer.join()
    assert done.returncode == 0, done.stderr
    restored = tmp_path / "restored.db"
    done = run_cli("tracking", "restore", dest, "--backend", f"sqlite:///{restored}",
                   "--artifacts", tmp_path / "restored-artifacts",
                   env={"HARNESS_TRACKING_HOME": str(tmp_path / "home2")})
    assert done.returncode == 0, done.stderr
    copy = MlflowClient(f"sqlite:///{restored}")
    steps = [m.step for m in copy.get_metric_history(run, "loss")]
    assert steps and steps == list(range(len(steps)))  # a consistent prefix, no gap
    artifact = copy.get_run(run).info.artifact_uri.split("mlflow-artifacts:/")[1]
    assert (tmp_path / "restored-artifacts" / artifact / "notes" / "a.txt").read_text() == "kept"


def test_an_sqlite_store_moves_into_postgresql_with_every_id(lab, tmp_path):
    source = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{source}")
    experiment = client.create_experiment("moved", tags={"mlflow.experimentKind": "x"})
    parent = client.create_run(experiment, run_name="parent").info.run_id
    child = client.create_run(experiment, run_name="child",
                              tags={"mlflow.parentRunId": parent}).info.run_id
    for step in range(50):
        client.log_metric(child, "val_loss", 1 / (step + 1), step=step)
    client.log_param(child, "lr", "0.01")
    client.set_terminated(child)
    cluster = lab.cluster
    cluster.ensure_database("imported")
    target = cluster.uri("imported")
    done = run_cli("tracking", "import", source, "--backend", target, env=lab.env)
    assert done.returncode == 0, done.stderr
    assert "imported 2 runs" in done.stdout
    moved = MlflowClient(target)
    run = moved.get_run(child)
    assert run.data.params == {"lr": "0.01"} and run.data.tags["mlflow.parentRunId"] == parent
    assert [m.value for m in moved.get_metric_history(child, "val_loss")] == [
        1 / (s + 1) for s in range(50)]
    assert moved.get_experiment(experiment).name == "moved"
    assert int(moved.create_experiment("after")) > int(experiment)  # ids go on past the copied
    again = run_cli("tracking", "import", source, "--backend", target, env=lab.env)
    assert again.returncode == 2 and "already holds runs" in again.stderr


def test_store_flags_refuse_bad_values_in_one_line(tmp_path):
    env = {"HARNESS_TRACKING_HOME": str(tmp_path / "home")}
    for args, words in [(("serve", "--store", "oracle"), "--store 'oracle': use sqlite or postgres"),
                        (("serve", "--store", "postgres", "--backend", "sqlite:///x.db"), "give one"),
                        (("serve", "--workers", "0"), "--workers 0: use 1..64"),
                        (("backup", tmp_path), "exists; give a new folder"),
                        (("restore", tmp_path), "not a backup"),
                        (("import", tmp_path / "nothing.db"), "not found")]:
        done = run_cli("tracking", *args, env=env)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    from tracking import postgres
    assert not postgres.cluster_root(tmp_path / "home").exists()
