"""Opening NVML, in one place: every reader of GPU facts goes through ``session()``.

``nvmlInit()`` raises ``NVMLError_LibraryNotFound`` without a driver, and some calls raise
``NVMLLibraryMismatchError``, which is not an ``NVMLError``: so any failure to open means "no
GPU here" to callers, never an exception into training.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

MB = 1e6  # MLflow's system metrics log memory in megabytes of 10^6 bytes, as its GPU monitor does


def import_nvml():
    import pynvml  # nvidia-ml-py, never the `pynvml` PyPI package
    return pynvml


@contextlib.contextmanager
def session(loader: Callable = import_nvml, errors: Optional[list] = None) -> Iterator[object]:
    """The initialised ``pynvml`` module, or None where NVML cannot be opened; shut down after.

    ``errors``, when given, receives the exception that made it None (for a one-line notice).
    """
    try:
        nvml = loader()
        nvml.nvmlInit()
    except Exception as e:  # NVMLError (no driver/library), a library mismatch, or no module
        if errors is not None:
            errors.append(e)
        yield None
        return
    try:
        yield nvml
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def device_count() -> int:
    """GPUs NVML sees on this machine; 0 without a driver."""
    with session() as nvml:
        return safe_read(nvml.nvmlDeviceGetCount, 0) if nvml else 0


def _in_session(read: Callable, empty):
    with session() as nvml:
        return empty if nvml is None else read(nvml)


def gpu_names(nvml=None) -> list[str]:
    """Every GPU's model name, in NVML's order (for the run's parameters); pass an open
    session to read several things in one."""
    if nvml is None:
        return _in_session(gpu_names, [])
    return [as_text(safe_read(lambda i=i: nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)),
                              "unknown")) for i in range(safe_read(nvml.nvmlDeviceGetCount, 0))]


def driver_versions(nvml=None) -> dict:
    """{'nvidia_driver': ..., 'cuda_driver': 'X.Y'}, or {} without a driver."""
    if nvml is None:
        return _in_session(driver_versions, {})
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()
        return {"nvidia_driver": as_text(nvml.nvmlSystemGetDriverVersion()),
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}"}
    except Exception:  # an old driver without the call: the run simply has no versions
        return {}


def memory_used_bytes(nvml, handle) -> int:
    """Memory in use as nvidia-smi reports it.

    NVML's v2 memory info leaves out what the driver reserves for itself (about 600 MiB on an
    H200), which the v1 call counts as used; fall back to v1 on drivers without v2.
    """
    try:
        return nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2).used
    except Exception:
        return nvml.nvmlDeviceGetMemoryInfo(handle).used


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def safe_read(read: Callable, default):
    try:
        return read()
    except Exception:
        return default
