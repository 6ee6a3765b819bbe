"""A ring-allreduce model of data-parallel step time, to explain a scaling gap.

Per step, each process computes its gradients (``compute_s``, the 1-process
step time) and the ranks sum them with a ring allreduce, which moves
2(N-1)/N x the gradient bytes through each link.  With ``bus_bw`` measured
by ``harness probe`` (the nccl-tests convention: bus bandwidth = algorithm
bandwidth x 2(N-1)/N), the allreduce takes 2(N-1)/N x bytes / bus_bw.
Without overlap the step is compute + allreduce; with perfect overlap
(Horovod starts reducing while backprop still runs) it is their maximum.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.runtime.collectives import ring_factor


def allreduce_seconds(nbytes: float, n: int, bus_bw: float) -> float:
    """Ring allreduce time of ``nbytes`` over ``n`` ranks at bus bandwidth ``bus_bw`` (B/s)."""
    return 0.0 if n <= 1 else ring_factor(n) * nbytes / bus_bw


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    allreduce_s: float

    @property
    def step_serial_s(self) -> float:
        return self.compute_s + self.allreduce_s

    @property
    def step_overlap_s(self) -> float:
        return max(self.compute_s, self.allreduce_s)

    @property
    def efficiency(self) -> float:
        """Predicted E(N) without overlap: the 1-process step over the N-process step."""
        return self.compute_s / self.step_serial_s

    @property
    def efficiency_overlap(self) -> float:
        return self.compute_s / self.step_overlap_s


def predict(compute_s: float, gradient_bytes: float, n: int, bus_bw: float) -> Prediction:
    return Prediction(compute_s, allreduce_seconds(gradient_bytes, n, bus_bw))


def diagnose(measured: float, predicted: Prediction, gpu_util_mean: float | None = None) -> str:
    """Which resource the gap points at, in one line."""
    comm_share = predicted.allreduce_s / predicted.step_serial_s
    if measured >= 0.9:
        return "scales well (efficiency >= 90%)"
    explained = predicted.efficiency <= measured + 0.1  # the model loses as much as we measure
    if explained and comm_share >= 0.2:
        return (f"communication-bound: the allreduce is {comm_share:.0%} of the modelled step and "
                "the model predicts the loss; try fp16 gradient compression, larger batches, or "
                "fewer nodes")
    where = "below" if measured < predicted.efficiency else "near"
    util = ""
    if gpu_util_mean is not None:
        util = f"; GPU utilisation {gpu_util_mean:.0f}%"
        if gpu_util_mean < 70:
            return (f"input-bound: efficiency {measured:.0%} is {where} the communication "
                    f"model's {predicted.efficiency:.0%}{util}: the GPUs wait for data")
    return (f"input- or compute-bound: efficiency {measured:.0%} is {where} the communication "
            f"model's {predicted.efficiency:.0%}, so the allreduce does not explain the gap{util} "
            "(on a shared CPU the processes also compete for cores and memory bandwidth)")
