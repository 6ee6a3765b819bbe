"""Where a run came from: versions, hosts, GPUs, git state (all best effort, never raising)."""
from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def versions(extra: dict = ()) -> dict:
    """Package versions (and ``extra``, e.g. the GPU driver's, passed in by the caller)."""
    found = {"python": platform.python_version()}
    for label, package in (("tensorflow", "tensorflow-cpu"), ("tensorflow", "tensorflow"),
                           ("keras", "keras"), ("horovod", "horovod"), ("mlflow", "mlflow"),
                           ("numpy", "numpy")):
        if found.get(label, "absent") == "absent":
            found[label] = _version(package)
    found.update(extra)
    return {f"version.{k}": v for k, v in found.items()}


def git_state(where: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return {"git.commit": "none"}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"git.commit": commit, "git.dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown"}


def host() -> str:
    return socket.gethostname()


def user() -> str:
    """Who ran it: the tracking server's user where it asks for one, else the login name
    (SLURM runs jobs as their owner)."""
    from tracking.auth import tracking_user
    known = tracking_user()
    if known:
        return known
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return os.environ.get("USER", "unknown")


def pip_freeze() -> str:
    lines = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"])
    return "\n".join(lines) + "\n"
