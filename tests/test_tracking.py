"""One truthful MLflow run per job, against a real mlflow server."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import REPO, run_cli
from mlflow_server import MlflowServer

pytestmark = pytest.mark.tracking
SPEC = REPO / "jobs" / "diabetes_mlp.yaml"
CURVES = ("loss", "val_loss", "generalization_gap", "accuracy", "val_accuracy", "lr",
          "time/epoch_s", "throughput/samples_per_sec")


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"{len(runs)} runs in {experiment}"
    return runs[0]


def _assert_each_epoch_once(client, run_id, epochs):
    for key in CURVES:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), f"{key}: {steps}"


def test_unreachable_server_is_exit_2_unless_tracking_is_optional(workdir, pima_csv):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # discard port: nothing listens
    args = ["run", SPEC, "--np", 1, "--set", f"data.csv={pima_csv}", "--set", "training.epochs=1"]
    refused = run_cli(*args, cwd=workdir, env=env)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "tracking server unreachable" in refused.stderr
    assert "tracking.required=false" in refused.stderr and not (workdir / "runs").exists()
    optional = run_cli(*args, "--set", "tracking.required=false", cwd=workdir, env=env)
    assert optional.returncode == 0 and "training without tracking" in optional.stdout


def _release(path, epoch: int) -> None:
    """Release the job's holds up to ``epoch`` (written whole: every rank reads it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(epoch))
    tmp.replace(path)


@pytest.mark.slow
def test_server_killed_mid_run_loses_no_metric(workdir, pima_csv, tmp_path_factory):
    """The server dies while the job holds after epoch 3, stays down while epochs 4-12 train and
    the job says so, and comes back while the job holds after epoch 12: the outage spans the
    same epochs on any machine, and the job cannot end before the server is back."""
    srv = MlflowServer(tmp_path_factory.mktemp("flaky")).start()
    epochs, release = 16, workdir / "release"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(SPEC), "--np", "2",
         "--set", f"data.csv={pima_csv}", "--set", f"training.epochs={epochs}"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": srv.url,
             "HARNESS_HOLD_AFTER_EPOCH": "3,12", "HARNESS_HOLD_RELEASE": str(release)})
    lines, down = [], f"tracking: {srv.url} unreachable"
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("hold: after epoch 3,"):
                srv.kill()  # the server dies; training goes on
                _release(release, 3)
            if any(line.startswith("hold: after epoch 12,") for line in lines) and \
                    any(down in line for line in lines):
                break  # the job is held and has seen the outage
        srv.start()  # back on the same port and database
        _release(release, 12)
        rest, _ = proc.communicate(timeout=400)
        output = "".join(lines) + rest
        assert proc.returncode == 0, output[-3000:]
        client = MlflowClient(srv.url)
        run = _only_run(client, "diabetes_mlp")
        # Said once per outage, not once per retry: when the server went away, and when what
        # waited was delivered (a restarting server may drop out once more while it warms up).
        downs = output.count(down)
        ups = len(re.findall(rf"tracking: {re.escape(srv.url)} reachable again after \d+ s; "
                             r"\d+ waiting metric values delivered", output))
        assert 1 <= downs <= 2 and ups == downs, output[-3000:]
        assert "harness tracking import" not in output  # nothing was left for the fallback file
        _assert_each_epoch_once(client, run.info.run_id, epochs)
    finally:
        proc.kill()
        srv.stop()


def test_outage_that_ends_in_the_final_flush_is_reported_once(tmp_path_factory):
    """The last metrics wait out an outage and are delivered while the run closes: said once each."""
    from tracking.mlflow_tracker import Metric, MetricSender
    srv = MlflowServer(tmp_path_factory.mktemp("final-flush")).start()
    try:
        client = MlflowClient(srv.url)
        run_id = client.create_run(client.create_experiment("t-final-flush")).info.run_id
        srv.kill()
        said = []
        sender = MetricSender(client, run_id, tmp_path_factory.mktemp("fb") / "fb.jsonl",
                              uri=srv.url, say=lambda line, flush=False: said.append(line))
        for step in range(3):
            sender.queue.put(Metric("loss", 1.0 / (step + 1), 1000 + step, step))
        sender.start()  # its first send fails at once; its next try is ten seconds away
        srv.start()
        assert sender.close() == 0
        assert len(said) == 2 and said[0].startswith(f"tracking: {srv.url} unreachable (")
        assert re.fullmatch(rf"tracking: {re.escape(srv.url)} reachable again after \d+ s; "
                            r"3 waiting metric values delivered", said[1])
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]
    finally:
        srv.stop()


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143), (1, 129)],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_or_kill_marks_the_run_killed_stops_every_rank_and_keeps_the_checkpoint(
        workdir, pima_csv, mlflow_server, signum, code):
    """Ctrl-C in the terminal (SIGINT), a plain ``kill`` (SIGTERM) or the terminal closing
    (SIGHUP) of ``harness run``: the run is KILLED with every finished epoch's metrics (shipped
    from rank 0's journal by the launcher), the checkpoint is kept, and horovodrun and its ranks
    (in a session of their own, so no terminal signal reaches them) are gone too."""
    import os
    import signal
    import psutil
    experiment = f"t-signal-{signum}"
    # Held after epoch 3 until the signal comes (no release file is ever written): the job is
    # training when signalled on any machine, however fast.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": experiment,
           "HARNESS_HOLD_AFTER_EPOCH": "3", "HARNESS_HOLD_RELEASE": str(workdir / "never-released")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(SPEC), "--np", "2", "--set", f"data.csv={pima_csv}",
         "--set", "training.epochs=1000", "--set", "checkpoint.every_epochs=1"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        # As from a terminal: a suite started in the background (`cmd &` in a script) inherits
        # SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("hold: after epoch 3"):
                break
        children = psutil.Process(proc.pid).children(recursive=True)  # horovodrun and the ranks
        assert len(children) >= 3
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # SIGKILL would orphan horovodrun's ranks (their own session)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == code, out[-2000:]
    _, alive = psutil.wait_procs(children, timeout=60)  # the launcher waited for horovodrun
    left = [" ".join(p.cmdline()[:4]) for p in alive]
    for orphan in alive:  # not to leak into the tests that follow
        orphan.kill()
    assert not left, left
    client = MlflowClient(mlflow_server.url)
    run = _only_run(client, experiment)
    assert run.info.status == "KILLED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps[:3] == [0, 1, 2] and len(steps) == len(set(steps))
    assert (workdir / "runs" / "diabetes_mlp" / "checkpoints" / "latest.json").exists()


def test_tracking_serve_prints_the_uri_answers_and_stops_even_a_hung_server(tmp_path):
    """The served store answers; SIGTERM to `harness tracking serve` stops it even when its
    server cannot finish (here frozen with SIGSTOP, as a worker stuck in a request never
    returns): after the grace period every process of it is killed and the port is free."""
    import os
    import signal
    import socket
    import psutil
    from tracking.server import free_port, wait_ready
    port = free_port()
    env = {**os.environ, "HARNESS_TRACKING_HOME": str(tmp_path / "home"),
           "HARNESS_SERVER_STOP_GRACE_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "tracking", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        first_lines = [proc.stdout.readline() for _ in range(2)]
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in first_lines[1]
        wait_ready(f"http://127.0.0.1:{port}", proc)  # /health, without the client's backoff
        MlflowClient(f"http://127.0.0.1:{port}").search_experiments()
        assert (tmp_path / "home" / "mlflow.db").exists()

        server = psutil.Process(proc.pid).children(recursive=True)
        assert server, "no server process under harness tracking serve"
        for p in server:
            p.suspend()  # SIGSTOP: it cannot act on SIGTERM until killed
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)  # bounds a failure only: the outcome is fixed
        assert proc.returncode == 1, rest
        assert "process(es) still running 2 s after SIGTERM; killed" in rest, rest
        assert "Traceback" not in rest, rest
        assert not [p for p in server if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # nothing holds the port any more
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_tracker_implements_the_one_interface():
    """The Tracker protocol, the MLflow and do-nothing trackers, and the deferred one rank 0
    really uses: the same methods with the same parameters, and the deferred one replays every
    call made before the run opened, in order, into the real tracker."""
    import inspect
    import threading
    from tracking.deferred import QUEUED, DeferredTracker
    from tracking.mlflow_tracker import MlflowTracker
    from tracking.tracker import NullTracker, Tracker
    wanted = {name for name in dir(Tracker) if not name.startswith("_")}
    def accepts(impl, protocol) -> bool:  # the protocol's parameters first; extras optional
        got = [p for n, p in inspect.signature(impl).parameters.items() if n != "self"]
        want = [n for n in inspect.signature(protocol).parameters if n != "self"]
        return ([p.name for p in got[:len(want)]] == want
                and all(p.default is not p.empty for p in got[len(want):]))

    for cls in (MlflowTracker, NullTracker):
        for name in wanted - {"run_id", "location"}:
            assert accepts(getattr(cls, name), getattr(Tracker, name)), (cls.__name__, name)
    assert set(QUEUED) | {n for n in vars(DeferredTracker) if not n.startswith("_")} >= wanted

    calls, gate = [], threading.Event()

    class Recording(NullTracker):
        run_id, location = "r1", "MLflow run r1"

        def __getattribute__(self, name):
            if name in wanted and name not in ("run_id", "location"):
                return lambda *a, **k: calls.append((name, a))
            return object.__getattribute__(self, name)

    deferred = DeferredTracker(lambda: (gate.wait(), Recording())[1])
    deferred.log_params({"a": 1})
    deferred.log_metrics({"loss": 0.5}, step=0)
    deferred.set_tags({"t": "x"})
    assert calls == []  # the run is not open yet: kept
    gate.set()
    assert deferred.run_id == "r1" and isinstance(deferred, Tracker)
    deferred.log_metrics({"loss": 0.4}, step=1)
    deferred.finish("FINISHED")
    assert [c[0] for c in calls] == ["log_params", "log_metrics", "set_tags", "log_metrics", "finish"]
    assert calls[1][1] == ({"loss": 0.5},) and calls[4][1] == ("FINISHED", "", None)

    # The launch's run id is known before the run opens: a checkpoint reads it without waiting.
    held = threading.Event()
    launched = DeferredTracker(lambda: (held.wait(), Recording())[1], run_id="r1")
    assert launched.run_id == "r1" and not held.is_set()  # answered while the run is still opening
    held.set()
    assert launched.wait().run_id == "r1"
    coming = threading.Event()
    pending = DeferredTracker(lambda: (coming.wait(), Recording())[1], run_id_of=lambda: "r1")
    assert pending.run_id == "r1" and not coming.is_set()  # read where the launcher writes it
    coming.set()


def test_only_the_senders_calls_are_quick_and_mlflow_keeps_its_retries(tmp_path):
    """A dead server: the sender's batch fails in one try, and the process-wide retry setting
    (which run creation, parameters, artifacts and the final status rely on) is left alone."""
    import os

    from mlflow.exceptions import MlflowException
    from tracking.mlflow_tracker import Metric, MlflowClient, send_batch
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    began = time.monotonic()
    with pytest.raises(MlflowException, match="127.0.0.1:9"):  # the refused connection, named
        send_batch(MlflowClient("http://127.0.0.1:9"), "0" * 32, [Metric("loss", 1.0, 0, 0)])
    assert time.monotonic() - began < 10  # MLflow's own retries take minutes here


def _serve(tmp_path, *flags):
    import os
    from tracking.server import free_port
    port = free_port()
    env = {**os.environ, "HARNESS_TRACKING_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "tracking", "serve", "--port",
                             str(port), *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    return proc, port


def _status_with_host(port: int, host_header: str) -> int:
    """What the server answers a request that names it ``host_header`` (sent over loopback)."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": host_header})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_serve_beyond_loopback_answers_its_names_and_still_refuses_others(tmp_path):
    import os
    import signal
    import socket
    from tracking.server import wait_ready
    proc, port = _serve(tmp_path, "--host", "0.0.0.0", "--allow-host", "tunnel.example")
    name = socket.gethostname()
    try:
        first_lines = [proc.stdout.readline() for _ in range(2)]
        # A URI other nodes can use: the host's name, never localhost.
        assert f"export MLFLOW_TRACKING_URI=http://{name}:{port}" in first_lines[1], first_lines
        wait_ready(f"http://127.0.0.1:{port}", proc)
        assert _status_with_host(port, f"{name}:{port}") == 200  # MLflow alone answers 403 here
        assert _status_with_host(port, f"tunnel.example:{port}") == 200  # --allow-host
        assert _status_with_host(port, f"rebind.attacker.example:{port}") == 403  # still on
        MlflowClient(f"http://{name}:{port}").search_experiments()  # as a compute node does
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_report_without_a_database_says_so_and_creates_none(workdir):
    done = run_cli("report", "0123456789abcdef", cwd=workdir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "run '0123456789abcdef': not found: no tracking database" in done.stderr
    assert not (workdir / "mlflow.db").exists()


def test_a_resume_reads_each_curves_last_step_without_any_history(tmp_path):
    """A week of telemetry (here 10^5 points) must not be fetched to learn where each curve
    stopped: the resume makes one read of the run, whatever the run holds."""
    from mlflow.entities import Metric
    from tracking.mlflow_tracker import last_logged_steps
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    now = int(time.time() * 1000)
    for start in range(0, 100_000, 1000):  # 10 telemetry keys x 10^4 seconds, and 7 epochs
        client.log_batch(run_id, metrics=[Metric(f"system/n/gpu_0_m{k}", 1.0, now, step)
                                          for step in range(start // 10, start // 10 + 100)
                                          for k in range(10)])
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (e + 1), now, e) for e in range(7)])

    calls = []

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(client, name)

    started = time.perf_counter()
    last = last_logged_steps(Counting(), run_id)
    print(f"last steps of a run with 10^5 telemetry points: {time.perf_counter() - started:.3f} s")
    assert calls == ["get_run"]
    assert last["loss"] == 6 and last["system/n/gpu_0_m3"] == 9_999 and len(last) == 11
