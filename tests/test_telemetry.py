"""The NVML sampler against a scripted NVML stand-in, the real no-GPU path, and the summary."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pynvml
import pytest

from harness.telemetry import summary as telemetry_summary
from harness.telemetry.sampler import Sampler


class FakeNvml:
    """Scripted NVML: GPUs listed in an order that differs from PCI bus order."""

    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1

    def __init__(self, buses=("0000:82:00.0", "0000:03:00.0"), energy=True, fail=None):
        self.buses, self.energy, self.fail = buses, energy, fail or {}
        self.calls: dict = {}
        self.tick = 0

    def _call(self, name, handle):
        self.calls[(name, handle)] = self.calls.get((name, handle), 0) + 1
        rule = self.fail.get((name, handle))
        if rule and self.tick >= rule[0]:
            raise rule[1]

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return len(self.buses)
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetPciInfo(self, h): return SimpleNamespace(busId=self.buses[h].encode())
    def nvmlDeviceGetUUID(self, h): return f"GPU-fake-{h}"
    def nvmlDeviceGetName(self, h): return "NVIDIA GeForce RTX 2080 Ti"
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return 250_000

    def nvmlDeviceGetMemoryInfo(self, h):
        self._call("memory", h)
        return SimpleNamespace(total=11 * 2**30, used=(2 + h) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._call("utilization", h)
        return SimpleNamespace(gpu=90 - 40 * h, memory=30)

    def nvmlDeviceGetPowerUsage(self, h): self._call("power", h); return 200_000
    def nvmlDeviceGetTemperature(self, h, kind): return 70
    def nvmlDeviceGetClockInfo(self, h, kind): return 1800 if kind == 1 else 7000
    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return 0x20 if h == 1 else 0

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._call("energy", h)
        if not self.energy:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 1_000_000 + 200_000 * self.tick

    def nvmlDeviceGetPcieThroughput(self, h, counter):
        self._call("pcie", h)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # a card without PCIe counters

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self._call("processes", h)
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called")


class FakePsutil:
    def cpu_percent(self, interval): return 37.5
    def virtual_memory(self): return SimpleNamespace(total=8 * 2**30, available=6 * 2**30, percent=25.0)
    def net_io_counters(self): return SimpleNamespace(bytes_recv=2**20, bytes_sent=2**21)


def _sampler(nvml, notes, sink=None):
    s = Sampler(sink or (lambda m, t: None), interval_s=1.0, host="nodeA",
                nvml_loader=lambda: nvml, notify=notes.append, psutil_module=FakePsutil())
    s._init_nvml()
    s.psutil.cpu_percent(None)
    s._net0 = s.psutil.net_io_counters()
    return s


def _run_ticks(s, nvml, n):
    out = []
    for i in range(n):
        nvml.tick = i
        out.append(s.tick(now=1000.0 + i))
    return out


def test_gpus_follow_pci_bus_order_and_metric_names(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml, notes = FakeNvml(), []
    s = _sampler(nvml, notes)
    assert [(g.index, g.pci_bus_id, g.uuid) for g in s.gpus] == [
        (0, "0000:03:00.0", "GPU-fake-1"), (1, "0000:82:00.0", "GPU-fake-0")]
    first = _run_ticks(s, nvml, 1)[0]
    for name in ("utilization_percentage", "memory_usage_megabytes", "power_usage_watts",
                 "temperature_celsius", "sm_clock_mhz"):
        assert f"system/nodeA/gpu_0_{name}" in first
    assert first["system/nodeA/cpu_utilization_percentage"] == 37.5
    assert first["system/nodeA/gpu_0_utilization_percentage"] == 50  # NVML index 1 is bus 03


def test_cuda_visible_devices_selects_by_index_and_uuid(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.uuid for g in _sampler(FakeNvml(), []).gpus] == ["GPU-fake-0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-1")
    assert [g.pci_bus_id for g in _sampler(FakeNvml(), []).gpus] == ["0000:03:00.0"]


def test_not_supported_is_asked_once_and_energy_falls_back_to_power(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml, notes = FakeNvml(energy=False), []
    s = _sampler(nvml, notes)
    ticks = _run_ticks(s, nvml, 12)
    assert nvml.calls[("pcie", 0)] == 2 and nvml.calls[("energy", 0)] == 1  # tx and rx once each
    assert not any("pcie" in k for t in ticks for k in t)
    # 200 W integrated over 11 one-second gaps
    assert ticks[-1]["system/nodeA/gpu_0_energy_joules"] == pytest.approx(2200.0)
    assert not [n for n in notes if "pcie" in n]  # NotSupported is normal: no notice


def test_library_mismatch_on_process_list_is_skipped_with_one_notice(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml, notes = FakeNvml(), []
    s = _sampler(nvml, notes)
    ticks = _run_ticks(s, nvml, 11)
    assert nvml.calls[("processes", 0)] == 1
    assert len([n for n in notes if "process_memory_megabytes" in n and "gpu 0" in n.lower()]) == 1
    assert "NVMLLibraryMismatchError" in notes[0]
    assert all("system/nodeA/gpu_0_utilization_percentage" in t for t in ticks)


def test_a_gpu_lost_mid_run_is_reported_and_the_others_go_on(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    lost = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    nvml, notes = FakeNvml(fail={("memory", 0): (3, lost)}), []  # NVML handle 0 is the job's GPU 1
    s = _sampler(nvml, notes)
    ticks = _run_ticks(s, nvml, 6)
    assert "system/nodeA/gpu_1_utilization_percentage" in ticks[2]
    assert "system/nodeA/gpu_1_utilization_percentage" not in ticks[4]
    assert all("system/nodeA/gpu_0_utilization_percentage" in t for t in ticks)
    assert len([n for n in notes if "was lost" in n]) == 1 and "GPU-fake-0" in notes[-1]


@pytest.mark.parametrize("error", [pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
                                   pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED),
                                   pynvml.NVMLLibraryMismatchError("mismatch")])
def test_no_driver_or_library_means_host_metrics_only(error):
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise error
    notes = []
    s = _sampler(Broken(), notes)
    assert s.gpus == [] and len(notes) == 1 and "host metrics only" in notes[0]
    metrics = s.tick(now=1.0)
    assert set(metrics) >= {"system/nodeA/cpu_utilization_percentage",
                            "system/nodeA/system_memory_usage_megabytes"}


def test_real_no_gpu_path_on_this_machine():
    notes, seen = [], []
    s = Sampler(lambda m, t: seen.append(m), interval_s=0.2, notify=notes.append).start()
    time.sleep(0.7)
    s.stop()
    if s.gpus:
        pytest.skip("this machine has a GPU: the no-GPU path is not reachable")
    assert "NVMLError_LibraryNotFound" in notes[0] or "NVML" in notes[0]
    host = socket.gethostname().split(".")[0]
    assert len(seen) >= 3 and f"system/{host}/cpu_utilization_percentage" in seen[-1]


def test_summary_arithmetic_and_flags():
    history = []
    for i in range(10):  # 10 s; GPU 0 busy, GPU 1 idle 40% and throttled; 1 s per sample
        history.append((float(i), {
            "system/a/gpu_0_utilization_percentage": 90.0 if i != 9 else 100.0,
            "system/a/gpu_0_memory_usage_megabytes": 1000.0 + 100 * i,
            "system/a/gpu_0_power_usage_watts": 200.0,
            "system/a/gpu_0_energy_joules": 200.0 * i,
            "system/a/gpu_0_clock_event_reasons": 0,
            "system/b/gpu_0_utilization_percentage": 0.0 if i < 4 else 60.0,
            "system/b/gpu_0_memory_usage_megabytes": 8000.0,
            "system/b/gpu_0_clock_event_reasons": 0x40 if i < 2 else 0,
        }))
    totals = {("a", 0): 11264.0, ("b", 0): 11264.0}
    summaries, flags = telemetry_summary.summarize(history, totals)
    a, b = summaries[("a", 0)], summaries[("b", 0)]
    assert a["utilization_mean_percentage"] == pytest.approx(91.0)
    assert a["utilization_p95_percentage"] == pytest.approx(95.5)
    assert a["memory_peak_megabytes"] == 1900.0 and a["energy_wh"] == pytest.approx(0.5)
    assert a["power_mean_watts"] == 200.0 and a["gpu_hours"] == pytest.approx(10 / 3600)
    assert b["idle_fraction"] == pytest.approx(0.4) and b["throttled_fraction"] == pytest.approx(0.2)
    assert b["throttled_s/thermal (hardware)"] == pytest.approx(2.0)
    text = "\n".join(flags)
    assert "b GPU 0 idle 40%" in text and "b GPU 0 is a straggler" in text
    assert "b GPU 0 throttled 20%" in text and "a GPU 0 peaked at 17%" in text
    assert "a GPU 0 idle" not in text and "a GPU 0 is a straggler" not in text
    names = telemetry_summary.as_metrics(summaries)
    assert "telemetry/b/gpu_0/throttled_s/thermal_hardware" in names


@pytest.mark.tracking
def test_two_nodes_write_into_one_run_on_a_real_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tracking.mlflow_tracker import Metric, MetricSender
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("t-telemetry") or client.create_experiment("t-telemetry")
    exp_id = exp.experiment_id if hasattr(exp, "experiment_id") else exp
    run_id = client.create_run(exp_id).info.run_id
    for host in ("nodeA", "nodeB"):
        sender = MetricSender(client, run_id, tmp_path / f"{host}.jsonl")
        sender.start()
        nvml = FakeNvml()
        s = _sampler(nvml, [], sink=lambda m, t: [sender.queue.put(Metric(k, v, int(t * 1000), int(t - 1000)))
                                                   for k, v in m.items()])
        s.host = host
        _run_ticks(s, nvml, 3)
        assert sender.close() == 0
    keys = set(client.get_run(run_id).data.metrics)
    for host in ("nodeA", "nodeB"):
        assert {f"system/{host}/gpu_0_utilization_percentage", f"system/{host}/gpu_1_power_usage_watts",
                f"system/{host}/cpu_utilization_percentage"} <= keys
    steps = [m.step for m in client.get_metric_history(run_id, "system/nodeB/gpu_1_sm_clock_mhz")]
    assert sorted(steps) == [0, 1, 2]


def test_timeline_plot_for_gpus_and_for_host_only(tmp_path, monkeypatch):
    from tracking.report import telemetry_section, timeline_png
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml()
    s = _sampler(nvml, [])
    history = [(1000.0 + i, m) for i, m in enumerate(_run_ticks(s, nvml, 6))]
    gpu_png = timeline_png(history, [1002.0, 1004.0], tmp_path / "gpu.png")
    host_only = [(t, {k: v for k, v in m.items() if "/gpu_" not in k}) for t, m in history]
    host_png = timeline_png(host_only, [1003.0], tmp_path / "host.png")
    assert gpu_png.stat().st_size > 5000 and host_png.stat().st_size > 5000
    assert "telemetry timeline" in telemetry_section(["telemetry a GPU 0: busy 90%"], gpu_png)


class FakeNvmlV2(FakeNvml):
    """A driver with NVML's v2 memory info, which leaves out the driver's own reservation."""

    nvmlMemory_v2 = object()
    RESERVED = 615 * 2**20  # what the sampler over-read on an H200 with v1

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        info = super().nvmlDeviceGetMemoryInfo(h)
        if version is self.nvmlMemory_v2:
            return SimpleNamespace(total=info.total, used=info.used - self.RESERVED)
        return info


@pytest.mark.parametrize("nvml,reserved", [(FakeNvml(), 0), (FakeNvmlV2(), FakeNvmlV2.RESERVED)],
                         ids=["v1-driver", "v2-driver"])
def test_memory_is_megabytes_of_1e6_read_as_nvidia_smi_does(monkeypatch, nvml, reserved):
    """MLflow's GPU monitor logs 10^6-byte megabytes; the v2 call excludes driver-reserved memory,
    and drivers without it fall back to v1."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sample = _run_ticks(_sampler(nvml, []), nvml, 1)[0]
    # The job's GPU 0 is NVML's index 1 (bus order), on which FakeNvml reports 3 GiB used.
    assert sample["system/nodeA/gpu_0_memory_usage_megabytes"] == pytest.approx(
        (3 * 2**30 - reserved) / 1e6)
    assert sample["system/nodeA/system_memory_usage_megabytes"] == pytest.approx(2 * 2**30 / 1e6)


def test_nvml_session_says_none_without_a_driver_and_always_shuts_down():
    from harness.telemetry import nvml as nvml_session
    errors = []
    with nvml_session.session(lambda: (_ for _ in ()).throw(
            pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)), errors) as nvml:
        assert nvml is None
    assert len(errors) == 1 and isinstance(errors[0], pynvml.NVMLError)

    class Counting(FakeNvml):
        shutdowns = 0

        def nvmlShutdown(self):
            Counting.shutdowns += 1
    with pytest.raises(RuntimeError):
        with nvml_session.session(lambda: Counting()) as nvml:
            raise RuntimeError("a reader failed")
    assert Counting.shutdowns == 1


def test_only_rank_0_reads_the_run_parameters_from_nvml():
    from harness.runtime.distributed import ProcessContext
    from harness.runtime.session import derived_params
    from harness.spec.loader import load_spec
    from conftest import REPO
    from slurm.environment import SlurmEnvironment
    spec = load_spec(REPO / "jobs" / "synthetic.yaml")
    ctx = dict(size=4, local_size=2, device="CPU", slurm=SlurmEnvironment.from_env(), hosts=("a",))
    assert derived_params(spec, ProcessContext(rank=1, local_rank=1, **ctx)) == {}
    chief = derived_params(spec, ProcessContext(rank=0, local_rank=0, **ctx))
    assert chief["lr.scaled"] == 4 * spec.training.learning_rate  # linear scaling at 4 processes
    assert chief["gpu_models"] == "none" and chief["cpus.per_process"] >= 1  # no GPU here


def test_a_week_of_ticks_keeps_the_samplers_memory_bounded(monkeypatch):
    """10^6 ticks (11.6 days at 1 s) through the real tick path with a scripted NVML: the sampler
    keeps running figures and a thinned timeline, never the ticks; the figures stay right."""
    import psutil
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml, notes = FakeNvml(), []
    s = _sampler(nvml, notes)
    s.gpus = s.gpus[:1]  # one GPU: 10^6 ticks in about a minute; each GPU adds a constant
    for i in range(5000):  # warm-up: the structures reach their size
        s.tick(now=float(i))
    before = psutil.Process().memory_info().rss
    for i in range(5000, 1_000_000):
        s.tick(now=float(i))
    grown = psutil.Process().memory_info().rss - before
    assert s.ticks == 1_000_000
    # Keeping the ticks themselves would be about 1 GB here (a dict of 12 readings each).
    assert grown < 50 * 2**20, f"{grown / 2**20:.0f} MB more after 10^6 ticks"
    assert len(s.timeline.items) < 2000 and s.timeline.items[-1][0] > 900_000
    figures = s.summary.summaries({})[("nodeA", s.gpus[0].index)]
    assert figures["gpu_hours"] == pytest.approx(1_000_000 / 3600, rel=1e-6)
    assert 0 <= figures["utilization_p95_percentage"] <= 100
