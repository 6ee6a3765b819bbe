"""Where a run came from: versions, hosts, GPUs, git state (all best effort, never raising)."""
from __future__ import annotations

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


def versions() -> dict:
    found = {"python": platform.python_version()}
    for label, package in (("tensorflow", "tensorflow-cpu"), ("tensorflow", "tensorflow"),
                           ("horovod", "horovod"), ("mlflow", "mlflow"), ("numpy", "numpy")):
        if found.get(label, "absent") == "absent":
            found[label] = _version(package)
    found.update(_cuda_versions())
    return {f"version.{k}": v for k, v in found.items()}


def _cuda_versions() -> dict:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            return {"nvidia_driver": driver, "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}"}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, or a mismatch: the run simply has no GPU versions
        return {}


def gpu_models() -> list[str]:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            return [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []


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


def pip_freeze() -> str:
    lines = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"])
    return "\n".join(lines) + "\n"
