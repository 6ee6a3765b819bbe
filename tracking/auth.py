"""Users of the lab's tracking server: MLflow's basic-auth app, set up and used the harness's way.

Server side (``harness tracking serve --auth``): the app's settings file, its user database and
the administrator's password live in the tracking home, each readable by its owner only.  Every
user may read every experiment (``default_permission = READ``); whoever creates an experiment
manages it, and nobody else may write to it or delete it unless granted.

Job side: a job writes as the user who submitted it, with the credentials MLflow itself reads
from ``~/.mlflow/credentials`` on the node (SLURM runs the job as that user, with that home).
The harness never copies them anywhere: not into the batch script, the spec, the logs or the run.
It refuses a credentials file other users can read, as ssh refuses such a key.
"""
from __future__ import annotations

import configparser
import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Optional

from harness.errors import UserError

ADMIN = "admin"
CREDENTIALS = Path("~/.mlflow/credentials")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def credentials_text(username: str, password: str) -> str:
    """MLflow's own credentials-file format."""
    return (f"[mlflow]\nmlflow_tracking_username = {username}\n"
            f"mlflow_tracking_password = {password}\n")


def read_credentials(path: Path) -> tuple[Optional[str], Optional[str]]:
    config = configparser.ConfigParser()
    config.read(path)
    section = config["mlflow"] if "mlflow" in config else {}
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def admin_credentials(home: Path) -> Path:
    return home / "admin-credentials"


def prepare(home: Path) -> Path:
    """The basic-auth app's settings file under ``home`` (the administrator's password generated
    the first time, kept in ``home/admin-credentials``); its path, for MLFLOW_AUTH_CONFIG_PATH."""
    admin_file = admin_credentials(home)
    if not admin_file.is_file():
        _write_private(admin_file, credentials_text(ADMIN, secrets.token_urlsafe(24)))
        print(f"tracking server: administrator {ADMIN!r}, password in {admin_file} (mode 600)")
    _, password = read_credentials(admin_file)
    config = home / "basic_auth.ini"
    _write_private(config, "[mlflow]\n"
                   "default_permission = READ\n"
                   f"database_uri = sqlite:///{home / 'basic_auth.db'}\n"
                   f"admin_username = {ADMIN}\n"
                   f"admin_password = {password}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "grant_default_workspace_access = false\n")
    return config


def add_user(home: Path, url: str, username: str, password: Optional[str] = None) -> str:
    """Create a user on the server at ``url`` with the administrator's credentials; the new
    user's credentials-file text."""
    import re
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", username):
        raise UserError(f"user {username!r}: use 1-64 letters, digits, '_', '.', '@', '-'")
    admin_file = admin_credentials(home)
    if not admin_file.is_file():
        raise UserError(f"{admin_file}: not found; run this where `harness tracking serve --auth` "
                        "runs, as its account (or set HARNESS_TRACKING_HOME)")
    admin, admin_password = read_credentials(admin_file)
    password = password or secrets.token_urlsafe(18)
    try:
        from mlflow.server import get_app_client
        with as_user(admin, admin_password):
            get_app_client("basic-auth", tracking_uri=url).create_user(username, password)
    except Exception as e:
        raise UserError(f"user {username!r}: the server at {url} refused "
                        f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    return credentials_text(username, password)


@contextlib.contextmanager
def as_user(username: str, password: str):
    """MLflow's clients in this process speak as ``username`` inside the block (MLflow reads
    the credentials from the environment on each request), as they did before it after."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, (username, password)))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_credentials_file(path: Path = CREDENTIALS) -> None:
    """Exit 2 when the user's MLflow credentials file is readable by others."""
    path = path.expanduser()
    if not path.is_file():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(f"{path}: mode {mode:o} lets other users read your tracking password; "
                        f"run chmod 600 {path}")


def tracking_user() -> Optional[str]:
    """Who the tracking server knows this process as (MLflow's own lookup: environment, then
    the credentials file); None without credentials."""
    from mlflow.utils.credentials import read_mlflow_creds
    return read_mlflow_creds().username
