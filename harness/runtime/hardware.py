"""What the hardware can do: the peak FLOP/s of the GPUs the lab runs on, with their sources, and a
CPU's measured in the process itself; what a model's training step costs in FLOPs.

The fraction of peak (``throughput/mfu``, "model FLOPs utilisation") is the model's FLOPs per
sample times the samples per second one GPU trains, over that GPU's peak for the precision the
step runs in.  Peaks are dense figures (no structured sparsity) at the boost clock.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Peak:
    fp32_tflops: float  # FP32 on the CUDA cores
    fp16_tflops: float  # FP16 as mixed precision runs it (tensor cores, FP32 accumulate), dense
    source: str


# Matched by substring of the NVML / TensorFlow device name, most specific first.
PEAKS = {
    "RTX 2080 Ti": Peak(13.4, 53.8, "NVIDIA Turing GPU Architecture whitepaper (2018), "
                        "Appendix A, reference RTX 2080 Ti: 13.4 FP32; FP16 tensor 107.6 with "
                        "FP16 accumulate, 53.8 with FP32 accumulate (GeForce)"),
    "GTX 1080 Ti": Peak(11.3, 0.177, "NVIDIA GeForce GTX 1080 Ti specifications: 3584 cores x "
                        "1582 MHz boost x 2 = 11.3 FP32; GP102 runs FP16 at 1/64 rate"),
    "GTX 1050 Ti": Peak(2.14, 0.033, "NVIDIA GeForce GTX 1050 Ti specifications: 768 cores x "
                        "1392 MHz boost x 2 = 2.14 FP32; GP107 runs FP16 at 1/64 rate"),
    "H100 PCIe": Peak(51.2, 756.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: 51 FP32, "
                      "1513 FP16 tensor with sparsity, so 756 dense"),
    "H100 NVL": Peak(60.0, 835.0, "NVIDIA H100 datasheet, H100 NVL: 60 FP32, 1671 FP16 tensor "
                     "with sparsity, so 835 dense"),
    "H100": Peak(67.0, 989.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 67 FP32, 1979 "
                 "FP16 tensor with sparsity, so 989 dense"),
    "H200 NVL": Peak(60.0, 835.0, "NVIDIA H200 datasheet, H200 NVL: 60 FP32, 1671 FP16 tensor "
                     "with sparsity, so 835 dense"),
    "H200": Peak(67.0, 989.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: 67 FP32, 1979 "
                 "FP16 tensor with sparsity, so 989 dense"),
}


def gpu_peak(name: str) -> Optional[Peak]:
    """The table's entry for a GPU's name (as NVML or TensorFlow gives it), or None."""
    for key, peak in PEAKS.items():
        if key.lower() in name.lower():
            return peak
    return None


def peak_flops(name: str, mixed_precision: bool) -> Optional[float]:
    peak = gpu_peak(name)
    if peak is None:
        return None
    return (peak.fp16_tflops if mixed_precision else peak.fp32_tflops) * 1e12


def cpu_matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matrix product in this process, with its thread settings: the
    CPU's attainable peak for the same process, measured rather than looked up."""
    import tensorflow as tf
    a = tf.random.uniform((n, n), seed=1)
    b = tf.random.uniform((n, n), seed=2)
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    product().numpy()  # trace and warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / statistics.median(times)


def gpu_name() -> str:
    """This process's GPU as TensorFlow names it ("" on a CPU)."""
    import tensorflow as tf
    gpus = tf.config.get_visible_devices("GPU")
    if not gpus:
        return ""
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def compute_capability() -> Optional[tuple[int, int]]:
    import tensorflow as tf
    gpus = tf.config.get_visible_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")


def step_flops(graph) -> dict:
    """FLOPs of each op in a traced step's graph, as TensorFlow's profiler counts them (a
    matrix product of m x k by k x n: 2mkn)."""
    from tensorflow.python.profiler import model_analyzer, option_builder
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = model_analyzer.profile(graph, options=options)
    return {child.name: child.float_ops for child in info.children}
