"""``harness tracking serve``: one ``mlflow server`` for the cluster, with sane defaults.

Binds 127.0.0.1 unless told otherwise (an open tracking server is an open
door), keeps artifacts in a known directory served through the server (so
compute nodes need no shared artifact path), and with ``--auth`` runs
MLflow's basic-auth app with a generated Flask secret key.
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


def server_command(backend: str, host: str, port: int, artifacts: Path, auth: bool) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "server", "--backend-store-uri", backend, "--host", host, "--port", str(port),
           "--serve-artifacts", "--artifacts-destination", str(artifacts), "--workers", "1"]
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
          log: Optional[Path] = None, own_session: bool = True) -> subprocess.Popen:
    """Start the server; ``own_session`` False keeps it in the caller's process group
    (so Ctrl-C or a kill of the group stops it with ``harness tracking serve``)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if auth:
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    out = open(log, "ab") if log else None
    return subprocess.Popen(server_command(backend, host, port, artifacts, auth), env=env,
                            stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=own_session)


def serve(backend: Optional[str], host: str, port: int, artifacts: Optional[str], auth: bool) -> int:
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: use 1..65535")
    if backend and not backend.startswith(("sqlite:///", "postgresql://", "postgresql+", "mysql")):
        raise UserError(f"--backend {backend!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    DEFAULT_HOME.mkdir(parents=True, exist_ok=True)
    backend = backend or f"sqlite:///{DEFAULT_HOME / 'mlflow.db'}"
    artifact_dir = Path(artifacts).expanduser() if artifacts else DEFAULT_HOME / "artifacts"
    shown = socket.getfqdn() if host == "0.0.0.0" else host
    print(f"tracking server: backend {backend}, artifacts {artifact_dir}")
    print(f"point jobs at it with: export MLFLOW_TRACKING_URI=http://{shown}:{port}", flush=True)
    proc = start(backend, host, port, artifact_dir, auth, own_session=False)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # stop the server with us
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
