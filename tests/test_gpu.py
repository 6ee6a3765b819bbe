"""On a real NVIDIA GPU: NVML telemetry reads plausible values.  Needs a driver, so it runs on the
device machine (`python -m pytest -m gpu`); everywhere else it skips and says why."""
from __future__ import annotations

import pytest

from harness.telemetry import nvml
from harness.telemetry.sampler import Sampler

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpus():
    count = nvml.device_count()
    if count == 0:
        pytest.skip("needs an NVIDIA GPU and driver (NVML finds none here); "
                    "run on a GPU node: python -m pytest -m gpu")
    return count


def test_sampler_reads_every_gpu_plausibly(gpus):
    sampler = Sampler(lambda metrics, t: None, interval_s=1.0, host="gpu", notify=print).open()
    try:
        first = sampler.tick()
        assert len(sampler.gpus) == gpus
        for gpu in sampler.gpus:
            used = first[f"system/gpu/gpu_{gpu.index}_memory_usage_megabytes"]
            assert 0 <= used <= gpu.memory_total_mb
            assert 0 <= first[f"system/gpu/gpu_{gpu.index}_utilization_percentage"] <= 100
            assert 0 < first[f"system/gpu/gpu_{gpu.index}_power_usage_watts"] < 2000
            assert gpu.uuid.startswith(("GPU-", "MIG-")) and gpu.pci_bus_id
    finally:
        sampler.stop()
