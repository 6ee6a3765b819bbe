"""Timing an engine's allreduce: the probe's sweep and the scaling sweep's per-model measurement.

Every rank runs these together (each call is a collective).  Bus bandwidth follows the
nccl-tests convention: algorithm bandwidth x 2(N-1)/N, the bytes a ring moves per link.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

MEASURE_ALLREDUCE = "measure_allreduce"  # a launch option `harness scale` sets: workers time their model's
MIN_SECONDS, MIN_ITERS, MAX_ITERS = 0.2, 3, 50


def ring_factor(n: int) -> float:
    return 2 * (n - 1) / n


def bus_bandwidth(nbytes: float, n: int, seconds: float) -> float:
    """Bus bandwidth (B/s) from one measured allreduce, as nccl-tests report it."""
    return ring_factor(n) * nbytes / seconds


def time_allreduce(reduce_once: Callable[[], None], barrier: Callable[[], None],
                   agree_max: Callable[[int], int]) -> float:
    """Median seconds of one allreduce: a warm-up, then repeats until 0.2 s or 50 iterations.

    Every rank must run the same number of iterations, so the stopping rule uses
    the iteration count agreed from the first timing, never a local clock alone.
    """
    reduce_once()  # warm-up: buffers, fusion, connections
    barrier()
    start = time.perf_counter()
    reduce_once()
    first = time.perf_counter() - start
    iterations = agree_max(int(min(MAX_ITERS, max(MIN_ITERS, MIN_SECONDS / max(first, 1e-6)))))
    times = []
    for _ in range(iterations):
        barrier()
        start = time.perf_counter()
        reduce_once()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gradient_bytes(model, fp16: bool) -> int:
    """Bytes one rank's gradients put on the wire per step (halved by fp16 compression)."""
    return trainable_elements(model) * (2 if fp16 else 4)


def trainable_elements(model) -> int:
    return sum(int(v.shape.num_elements()) for v in model.trainable_variables)


def measure_gradient_allreduce(model, fp16: bool, engine, size: int) -> dict:
    """Every rank: time one allreduce of the model's gradient size; the communication model's input."""
    nbytes = gradient_bytes(model, fp16)
    figures = {"comm/gradient_bytes": nbytes,
               "model/trainable_parameters": trainable_elements(model)}
    if size > 1:
        seconds = engine.time_allreduce(nbytes, "float16" if fp16 else "float32")
        figures["comm/allreduce_s"] = seconds
        figures["comm/busbw_GBps"] = bus_bandwidth(nbytes, size, seconds) / 1e9
    return figures
