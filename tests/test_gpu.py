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


def test_local_sweep_points_side_by_side_each_get_their_own_gpus(gpus, tmp_path):
    """`harness sweep --local --max-parallel K` on a GPU machine: no more points at once than
    GPUs allow, and each point's processes see only the GPUs it was given (its rank 0 would
    otherwise pin GPU 0 along with every other point's)."""
    import json
    import sys
    from types import SimpleNamespace

    from harness.group import local
    from harness.spec.manifest import Layout

    class Probe(local.PointRunner):  # the point's process reports what it sees, no TensorFlow
        def command(self, point):
            return [sys.executable, "-c", "import json, os; print(json.dumps("
                    "{'visible': os.environ.get('CUDA_VISIBLE_DEVICES')}))"]

    wanted = gpus + 1
    at_once = local.parallelism(wanted, 1, gpus)
    assert at_once == gpus  # one GPU per 1-process point
    points = [SimpleNamespace(index=i, name=f"p{i}", run_id=f"r{i}") for i in range(2 * gpus)]
    launch = SimpleNamespace(points=points, layout_of=lambda index: Layout(1), path="unused")
    runner = Probe(launch, tmp_path, gpus, at_once)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(at_once) as pool:
        codes = list(pool.map(runner.run, points))
    assert all(code == 0 for code, _ in codes)
    seen = [json.loads((tmp_path / f"point-{i}.log").read_text())["visible"]
            for i in range(2 * gpus)]
    assert sorted(set(seen)) == [str(g) for g in range(gpus)], seen
    print(f"{gpus} GPU(s): at most {at_once} points at once; points saw GPUs {seen}")
