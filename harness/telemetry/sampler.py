"""NVML and host telemetry: one sampler per node, in a background thread, never raising into training.

No TensorFlow here: this runs anywhere ``nvidia-ml-py`` and ``psutil`` do
(scripts/gpu_check.py uses it as a node health check).

GPUs are identified by UUID and PCI bus id, never by NVML index alone: NVML
numbers GPUs its own way, CUDA (with CUDA_DEVICE_ORDER=PCI_BUS_ID, as the
sbatch scripts set) by PCI bus id, so the job's GPU ``i`` is the i-th visible
GPU in bus order.  Metric names follow MLflow's system-metric prefix
``system/<host>/...`` so MLflow's UI shows them in its system-metrics view.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness.telemetry import nvml as nvml_session
from harness.telemetry import summary as telemetry_summary
from harness.telemetry.nvml import MB, as_text, safe_read

# Fast readings every tick; slow ones (PCIe throughput blocks ~20 ms, process lists) every SLOW_EVERY ticks.
SLOW_EVERY = 5
TIMELINE_POINTS = 2000  # ticks kept for the timeline plot, spread evenly over the whole job
FAST_METRICS = ("utilization_percentage", "memory_utilization_percentage", "memory_usage_megabytes",
                "power_usage_watts", "temperature_celsius", "sm_clock_mhz", "memory_clock_mhz",
                "clock_event_reasons", "energy_joules")
SLOW_METRICS = ("pcie_tx_kbps", "pcie_rx_kbps", "process_memory_megabytes")


@dataclass
class GpuInfo:
    index: int  # the job's local GPU index (CUDA order among the visible GPUs)
    uuid: str
    pci_bus_id: str
    name: str
    memory_total_mb: float
    power_limit_w: float
    handle: object = None
    lost: bool = False
    unsupported: set = field(default_factory=set)
    energy_base_mj: Optional[float] = None  # energy counter at start, where the card has one
    integrated_j: float = 0.0  # energy integrated from power where it does not


def visible_gpus(nvml, env=os.environ) -> list[GpuInfo]:
    """The GPUs this job uses, in CUDA's PCI-bus order, honouring CUDA_VISIBLE_DEVICES."""
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        found.append((as_text(nvml.nvmlDeviceGetPciInfo(handle).busId), handle))
    found.sort(key=lambda item: item[0].lower())
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() != "":
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        by_uuid = {as_text(nvml.nvmlDeviceGetUUID(h)): (b, h) for b, h in found}
        found = [by_uuid[w] if w.startswith(("GPU-", "MIG-")) else found[int(w)]
                 for w in wanted if (w in by_uuid or (w.isdigit() and int(w) < len(found)))]
    gpus = []
    for index, (bus, handle) in enumerate(found):
        gpus.append(GpuInfo(
            index=index, uuid=as_text(nvml.nvmlDeviceGetUUID(handle)), pci_bus_id=bus,
            name=as_text(nvml.nvmlDeviceGetName(handle)),
            memory_total_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total / MB,
            power_limit_w=safe_read(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0, 0.0),
            handle=handle))
    return gpus


class Sampler:
    """Samples every GPU the job uses and the host, every ``interval_s``, into ``sink``.

    ``sink(metrics: dict[name, value], timestamp_s)`` is called once per tick
    with everything read in that tick (one batched write).  ``start()`` and
    ``stop()`` never raise; problems become one notice each via ``notify``.
    """

    def __init__(self, sink: Callable[[dict, float], None], interval_s: float = 1.0,
                 host: Optional[str] = None, nvml_loader: Callable = nvml_session.import_nvml,
                 notify: Callable[[str], None] = print, psutil_module=None,
                 job_pids: Optional[set] = None):
        self.sink, self.interval_s, self.notify = sink, interval_s, notify
        self.job_pids = job_pids  # None: count every compute process on the job's GPUs
        self.host = host or socket.gethostname().split(".")[0]
        self._names: dict = {}  # (metric, GPU index) -> its MLflow name
        self.nvml_loader = nvml_loader
        self.psutil = psutil_module
        self.nvml = None
        self.gpus: list[GpuInfo] = []
        # Bounded, whatever the job's length: running figures for the summary, and at most
        # TIMELINE_POINTS ticks spread over the job for the timeline plot.
        self.summary = telemetry_summary.RunningSummary()
        self.timeline = telemetry_summary.Thinned(TIMELINE_POINTS)
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_time: Optional[float] = None
        self._net0 = None
        self._nvml_open = contextlib.ExitStack()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "Sampler":
        """Find the GPUs and set the host counters' reference points; ``tick()`` then works."""
        self._init_nvml()
        if self.psutil is None:
            import psutil
            self.psutil = psutil
        self.psutil.cpu_percent(None)  # the first call only sets the reference point
        self._net0 = safe_read(self.psutil.net_io_counters, None)
        return self

    def start(self) -> "Sampler":
        """open(), then tick every interval in a background thread until stop()."""
        self.open()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 3 * self.interval_s))
        self._nvml_open.close()  # shuts NVML down

    def _init_nvml(self) -> None:
        errors: list = []
        nvml = self._nvml_open.enter_context(nvml_session.session(self.nvml_loader, errors))
        try:
            self.gpus = visible_gpus(nvml) if nvml is not None else []
            self.nvml = nvml
        except Exception as e:  # NVMLError or NVMLLibraryMismatchError while listing GPUs
            errors.append(e)
        if errors:
            e = errors[0]
            self.notify(f"telemetry: no GPU found ({type(e).__name__}: {e}); "
                        "recording host metrics only")
            self.gpus, self.nvml = [], None
            return
        if not self.gpus:
            self.notify("telemetry: NVML sees no GPU for this job; recording host metrics only")

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.tick()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    # ------------------------------------------------------------------ one tick
    def tick(self, now: Optional[float] = None) -> dict:
        """Read everything once; never raises."""
        now = time.time() if now is None else now
        dt = 0.0 if self._last_time is None else now - self._last_time
        self._last_time = now
        slow = self.ticks % SLOW_EVERY == 0
        metrics = {}
        try:
            metrics.update(self._host_metrics())
        except Exception as e:
            self.notify(f"telemetry: host metrics failed ({type(e).__name__}: {e})")
        for gpu in self.gpus:
            if not gpu.lost:
                metrics.update(self._gpu_metrics(gpu, dt, slow))
        self.ticks += 1
        self.summary.add(now, metrics)
        self.timeline.add((now, metrics))
        try:
            self.sink(metrics, now)
        except Exception as e:
            self.notify(f"telemetry: could not record a sample ({type(e).__name__}: {e})")
        return metrics

    def _name(self, metric: str, gpu: Optional[GpuInfo] = None) -> str:
        key = (metric, gpu.index if gpu else None)
        name = self._names.get(key)
        if name is None:  # made once per metric: a tick names a dozen per GPU
            name = self._names[key] = (f"system/{self.host}/"
                                       + (f"gpu_{gpu.index}_{metric}" if gpu else metric))
        return name

    def _host_metrics(self) -> dict:
        ps = self.psutil
        memory = ps.virtual_memory()
        out = {self._name("cpu_utilization_percentage"): ps.cpu_percent(None),
               self._name("system_memory_usage_megabytes"): (memory.total - memory.available) / MB,
               self._name("system_memory_usage_percentage"): memory.percent}
        net = safe_read(ps.net_io_counters, None)
        if net is not None and self._net0 is not None:
            out[self._name("network_receive_megabytes")] = (net.bytes_recv - self._net0.bytes_recv) / MB
            out[self._name("network_transmit_megabytes")] = (net.bytes_sent - self._net0.bytes_sent) / MB
        return out

    def _gpu_metrics(self, gpu: GpuInfo, dt: float, slow: bool) -> dict:
        readers = self._readers(gpu, dt)
        wanted = FAST_METRICS + (SLOW_METRICS if slow else ())
        out = {}
        for metric in wanted:
            if metric in gpu.unsupported:
                continue
            try:
                value = readers[metric]()
            except Exception as e:
                if self._handle_error(gpu, metric, e):
                    return out  # the GPU is gone: stop reading it, keep the others
                continue
            if value is not None:
                out[self._name(metric, gpu)] = float(value)
        return out

    def _handle_error(self, gpu: GpuInfo, metric: str, error: Exception) -> bool:
        """Classify an NVML error; True when the GPU is lost."""
        nvml = self.nvml
        code = getattr(error, "value", None)
        if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
            gpu.unsupported.add(metric)  # this card never has it: do not ask again
            return False
        if code in (getattr(nvml, "NVML_ERROR_GPU_IS_LOST", 15), getattr(nvml, "NVML_ERROR_UNKNOWN", 999)):
            gpu.lost = True
            self.notify(f"telemetry: GPU {gpu.index} ({gpu.uuid}, bus {gpu.pci_bus_id}) was lost "
                        f"({error}); sampling the other GPUs goes on")
            return True
        if metric not in gpu.unsupported:  # NVMLLibraryMismatchError and others: once, then skip
            gpu.unsupported.add(metric)
            self.notify(f"telemetry: GPU {gpu.index} {metric} unavailable "
                        f"({type(error).__name__}: {error}); skipping it")
        return False

    def _readers(self, gpu: GpuInfo, dt: float) -> dict:
        nvml, h = self.nvml, gpu.handle
        util = {}

        def utilization(key):
            if "u" not in util:
                util["u"] = nvml.nvmlDeviceGetUtilizationRates(h)
            return getattr(util["u"], key)

        return {
            "utilization_percentage": lambda: utilization("gpu"),
            "memory_utilization_percentage": lambda: utilization("memory"),
            "memory_usage_megabytes": lambda: nvml_session.memory_used_bytes(nvml, h) / MB,
            "power_usage_watts": lambda: self._power(gpu, dt),
            "temperature_celsius": lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            "memory_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
            "clock_event_reasons": lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(h),
            "energy_joules": lambda: self._energy(gpu),
            "pcie_tx_kbps": lambda: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES),
            "pcie_rx_kbps": lambda: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES),
            "process_memory_megabytes": lambda: self._process_memory(gpu),
        }

    def _power(self, gpu: GpuInfo, dt: float) -> float:
        watts = self.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
        gpu.integrated_j += watts * dt  # used when the card has no energy counter
        return watts

    def _energy(self, gpu: GpuInfo) -> float:
        if "energy_counter" in gpu.unsupported:
            return gpu.integrated_j
        try:
            millijoules = self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
        except Exception as e:
            if getattr(e, "value", None) != getattr(self.nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
                raise
            gpu.unsupported.add("energy_counter")  # Pascal GeForce cards lack it: integrate power
            return gpu.integrated_j
        if gpu.energy_base_mj is None:
            gpu.energy_base_mj = millijoules
        return (millijoules - gpu.energy_base_mj) / 1000.0

    def _process_memory(self, gpu: GpuInfo) -> float:
        """Memory used on this GPU by the job's processes (all compute processes without job_pids)."""
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
        used = [p.usedGpuMemory or 0 for p in procs if self.job_pids is None or p.pid in self.job_pids]
        return sum(used) / MB

    def inventory(self) -> list[dict]:
        """What was found: for parameters and the report."""
        return [{"index": g.index, "uuid": g.uuid, "pci_bus_id": g.pci_bus_id, "name": g.name,
                 "memory_total_mb": g.memory_total_mb, "power_limit_w": g.power_limit_w}
                for g in self.gpus]
