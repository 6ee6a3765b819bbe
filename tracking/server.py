"""``harness tracking serve``: one ``mlflow server`` for the cluster, with sane defaults.

The store: SQLite in the tracking home for one person (the default), the tracking home's own
PostgreSQL cluster for a lab (``--store postgres``, several workers: tracking/postgres.py), or
any database URI (``--backend``).

Binds 127.0.0.1 unless told otherwise (an open tracking server is an open
door), keeps artifacts in a known directory served through the server (so
compute nodes need no shared artifact path), and with ``--auth`` runs
MLflow's basic-auth app with a generated Flask secret key.

MLflow 3.17's server refuses (HTTP 403) a request whose Host header is not
localhost or a private address, against DNS rebinding.  Compute nodes reach
the head node by its name, so the server is started with ``--allowed-hosts``
listing MLflow's defaults plus every name and address of this machine (and
``--allow-host`` aliases), and the CORS origins the UI needs on them.  The
protection stays on: any other Host header is still refused.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from harness.errors import UserError

DEFAULT_HOME = Path(os.environ.get("HARNESS_TRACKING_HOME", "~/.lars-harness/tracking")).expanduser()


LOOPBACK = ("127.0.0.1", "localhost", "::1")
# MLflow's own default allow-list (mlflow.server.security_utils): loopback on any port and the
# private address ranges.  Passing --allowed-hosts replaces it, so it is repeated here.
MLFLOW_DEFAULT_HOSTS = ["localhost", "127.0.0.1", "[::1]", "localhost:*", "127.0.0.1:*",
                        "[[]::1]:*", "10.*", "192.168.*", *[f"172.{i}.*" for i in range(16, 32)],
                        "fc00:*", "fd00:*"]


def machine_names() -> list[str]:
    """The names and addresses other machines may use for this one."""
    names = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    try:
        import psutil
        for addresses in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0] for a in addresses
                         if a.family in (socket.AF_INET, socket.AF_INET6))
    except Exception:  # psutil missing or an unusual interface: the names still work
        pass
    return sorted(n for n in names if n)


def _as_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name  # an IPv6 address in a Host header


def allowed_hosts(names: list[str], port: int, aliases: list[str] = ()) -> list[str]:
    """MLflow's defaults, then each name with and without the port."""
    hosts = list(MLFLOW_DEFAULT_HOSTS)
    for name in [*names, *aliases]:
        host = _as_host(name)
        hosts += [host.replace("[", "[[]", 1), f"{host.replace('[', '[[]', 1)}:{port}"]
    return list(dict.fromkeys(hosts))


def cors_origins(names: list[str], port: int, aliases: list[str] = ()) -> list[str]:
    """The UI's origins when a browser opens it by one of the names."""
    return [f"{scheme}://{_as_host(n)}:{port}" for n in [*names, *aliases]
            for scheme in ("http", "https")]


def server_command(backend: str, host: str, port: int, artifacts: Path, auth: bool,
                   aliases: list[str] = (), workers: int = 1) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    names = machine_names()
    cmd = [mlflow, "server", "--backend-store-uri", backend, "--host", host, "--port", str(port),
           "--serve-artifacts", "--artifacts-destination", str(artifacts), "--workers", str(workers),
           "--allowed-hosts", ",".join(allowed_hosts(names, port, aliases)),
           "--cors-allowed-origins", ",".join(cors_origins(names, port, aliases))]
    return cmd + (["--app-name", "basic-auth"] if auth else [])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll /health until the server answers (its first answer takes ~25 s on 2 cores)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not ready after {timeout_s:.0f} s")


def start(backend: str, host: str, port: int, artifacts: Path, auth: bool = False,
          log: Optional[Path] = None, own_session: bool = True,
          aliases: list[str] = (), workers: int = 1,
          auth_config: Optional[Path] = None) -> subprocess.Popen:
    """Start the server; ``own_session`` False keeps it in the caller's process group
    (so Ctrl-C or a kill of the group stops it with ``harness tracking serve``).
    ``auth_config``: the basic-auth app's settings (tracking/auth.py)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # MLflow 3's job runner (a Huey consumer with five workers) serves GenAI features: online
    # scoring, trace archival.  A training lab uses none; it costs a process that imports MLflow
    # for its first ~30 s and polls every minute, on the machine that answers every job's calls.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth:
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        if auth_config:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    out = open(log, "ab") if log else None
    return subprocess.Popen(server_command(backend, host, port, artifacts, auth, aliases, workers),
                            env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=own_session)


STORES = ("sqlite", "postgres")
# SQLite takes one writer at a time: more workers only queue on its lock.  PostgreSQL takes many.
DEFAULT_WORKERS = {"sqlite": 1, "postgres": 4, "uri": 4}


def check_backend(backend: Optional[str], store: Optional[str]) -> None:
    if backend and store:
        raise UserError(f"--store {store} and --backend {backend}: give one (--store picks the "
                        "tracking home's own database, --backend names another)")
    if store and store not in STORES:
        raise UserError(f"--store {store!r}: use sqlite or postgres")
    if backend and not backend.startswith(("sqlite:///", "postgresql://", "postgresql+", "mysql")):
        raise UserError(f"--backend {backend!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


def open_store(backend: Optional[str], store: Optional[str], home: Path = None, say=print):
    """(backend URI, the PostgreSQL cluster this call started or None, kind) for serve, backup
    and import; the tracking home's PostgreSQL cluster is initialised and started if needed."""
    home = home or DEFAULT_HOME
    check_backend(backend, store)
    home.mkdir(parents=True, exist_ok=True)
    if backend:
        return backend, None, "sqlite" if backend.startswith("sqlite") else "uri"
    if store == "postgres":
        from tracking import postgres
        cluster, started = postgres.up(home, say)
        return cluster.uri(), cluster if started else None, "postgres"
    return f"sqlite:///{home / 'mlflow.db'}", None, "sqlite"


def serve(backend: Optional[str], host: str, port: int, artifacts: Optional[str], auth: bool,
          aliases: list[str] = (), store: Optional[str] = None,
          workers: Optional[int] = None) -> int:
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: use 1..65535")
    if workers is not None and not 1 <= workers <= 64:
        raise UserError(f"--workers {workers}: use 1..64")
    for alias in aliases:
        if not alias or any(c in alias for c in ",/ @"):
            raise UserError(f"--allow-host {alias!r}: give a host name or address, e.g. "
                            "--allow-host headnode.lab.example")
    backend, cluster, kind = open_store(backend, store)
    try:
        return _serve(backend, kind, host, port, artifacts, auth, aliases,
                      workers or DEFAULT_WORKERS[kind])
    finally:
        if cluster is not None:
            cluster.stop()


def _serve(backend: str, kind: str, host: str, port: int, artifacts: Optional[str], auth: bool,
           aliases: list[str], workers: int) -> int:
    artifact_dir = Path(artifacts).expanduser() if artifacts else DEFAULT_HOME / "artifacts"
    # Beyond loopback, other nodes need a name that reaches this machine, not "localhost".
    shown = host if host in LOOPBACK else socket.gethostname() if host in ("0.0.0.0", "::") else host
    auth_config = None
    if auth:
        from tracking import auth as basic_auth
        auth_config = basic_auth.prepare(DEFAULT_HOME)
    print(f"tracking server: backend {backend}, artifacts {artifact_dir}, {workers} worker(s)")
    print(f"point jobs at it with: export MLFLOW_TRACKING_URI=http://{_as_host(shown)}:{port}",
          flush=True)
    proc = start(backend, host, port, artifact_dir, auth, own_session=False, aliases=list(aliases),
                 workers=workers, auth_config=auth_config)
    signal.signal(signal.SIGTERM, _asked_to_stop)
    try:
        return proc.wait()
    except (KeyboardInterrupt, StopAsked):
        # A second SIGTERM must not cut the stop short (and the store's PostgreSQL after it).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return stop(proc)


class StopAsked(Exception):
    """SIGTERM reached ``harness tracking serve`` (systemd, a plain kill, scancel)."""


def _asked_to_stop(*_) -> None:
    raise StopAsked


# How long a server may take to finish its requests after SIGTERM.  A worker stuck in one (a
# slow query, a client that stopped reading) would otherwise hold the serve command, and the
# PostgreSQL cluster it stops after the server, forever.
STOP_GRACE_S = float(os.environ.get("HARNESS_SERVER_STOP_GRACE_S", "30"))


def stop(proc: subprocess.Popen, grace_s: float = None) -> int:
    """SIGTERM the server; whatever of it is still there after ``grace_s`` (the server, or a
    worker it left behind holding the port), SIGKILL.  Its exit code, or 1 when something of it
    had to be killed."""
    import psutil
    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    deadline = time.monotonic() + grace_s
    proc.terminate()
    try:
        code = proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        code = None
    # Workers the server left behind get what is left of the grace to exit on their own.
    _, left = psutil.wait_procs([p for p in tree if _still_running(p)],
                                timeout=max(0.0, deadline - time.monotonic()))
    left = [p for p in left if _still_running(p)]
    if not left:
        return code
    print(f"tracking server: {len(left)} process(es) still running {grace_s:.0f} s after "
          "SIGTERM; killed", file=sys.stderr, flush=True)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    proc.wait()
    return 1


def _still_running(process) -> bool:
    import psutil
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
