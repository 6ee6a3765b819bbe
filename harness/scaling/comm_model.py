"""A ring-allreduce model of data-parallel step time, flat and hierarchical.

Per step, each process computes its gradients (``compute_s``, the 1-process
step time) and the ranks sum them with a ring allreduce, which moves
2(N-1)/N x the gradient bytes through each link.  With ``bus_bw`` measured
by ``harness probe`` (the nccl-tests convention: bus bandwidth = algorithm
bandwidth x 2(N-1)/N), the allreduce takes 2(N-1)/N x bytes / bus_bw.
Without overlap the step is compute + allreduce; with perfect overlap
(Horovod starts reducing while backprop still runs) it is their maximum.

Across nodes the allreduce is hierarchical (NCCL's and Horovod's
HOROVOD_HIERARCHICAL_ALLREDUCE): a reduce-scatter and an all-gather among the
g GPUs of each node over the intra-node bus (PCIe through the host on cards
without peer-to-peer), and between them a ring over the k nodes' network:

    t = 2(g-1)/g x B / bw_intra + 2(g-1) a_intra  +  2(k-1)/k x B / bw_inter + 2(k-1) a_inter

B the gradient bytes, a the per-message latency of each ring step.  With k = 1 it is the flat
ring inside a node, with g = 1 the flat ring over the network.  What it leaves out: contention
between the g local ranks for the host's memory bandwidth beyond what bw_intra measured, and
compute that slows when N grows.

A distributed step also has a floor: however few bytes it moves, it spends ``floor_s`` beyond
its compute (Horovod negotiates every gradient tensor in cycles of HOROVOD_CYCLE_TIME; on a CPU
its threads and MPI's polling share the cores with the compute).  The step is then
compute + max(floor, allreduce): the floor hides under a slow allreduce, and the allreduce under
a high floor, as the two-node test measured on 100 Mbit/s, 1 Gbit/s and an unshaped link.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.runtime.collectives import ring_factor


def allreduce_seconds(nbytes: float, n: int, bus_bw: float) -> float:
    """Ring allreduce time of ``nbytes`` over ``n`` ranks at bus bandwidth ``bus_bw`` (B/s)."""
    return 0.0 if n <= 1 else ring_factor(n) * nbytes / bus_bw


@dataclass(frozen=True)
class Layout:
    nodes: int
    per_node: int

    @property
    def processes(self) -> int:
        return self.nodes * self.per_node

    def __str__(self) -> str:
        return f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.per_node}"


@dataclass(frozen=True)
class Links:
    """Bus bandwidths (B/s) and per-message latencies (s) inside a node and between nodes."""
    intra_bw: float
    inter_bw: float
    intra_latency: float = 0.0
    inter_latency: float = 0.0
    sources: tuple = ()  # ("intra: measured by ...", "inter: profile lars (ASSUMPTION)")


def hierarchical_allreduce_seconds(nbytes: float, layout: Layout, links: Links) -> float:
    """Two-level ring allreduce of ``nbytes`` at ``layout``: the node phase plus the network phase."""
    g, k = layout.per_node, layout.nodes
    intra = 0.0 if g <= 1 else (ring_factor(g) * nbytes / links.intra_bw
                                + 2 * (g - 1) * links.intra_latency)
    inter = 0.0 if k <= 1 else (ring_factor(k) * nbytes / links.inter_bw
                                + 2 * (k - 1) * links.inter_latency)
    return intra + inter


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    allreduce_s: float
    floor_s: float = 0.0  # the least a distributed step spends beyond its compute

    @property
    def communication_s(self) -> float:
        return max(self.floor_s, self.allreduce_s)

    @property
    def step_serial_s(self) -> float:
        return self.compute_s + self.communication_s

    @property
    def step_overlap_s(self) -> float:
        return max(self.compute_s, self.communication_s)

    @property
    def efficiency(self) -> float:
        """Predicted E(N) without overlap: the 1-process step over the N-process step."""
        return self.compute_s / self.step_serial_s

    @property
    def efficiency_overlap(self) -> float:
        return self.compute_s / self.step_overlap_s


def predict(compute_s: float, gradient_bytes: float, n: int, bus_bw: float,
            floor_s: float = 0.0) -> Prediction:
    """Flat ring over ``n`` ranks at one bus bandwidth (as a sweep measured it at that size)."""
    return Prediction(compute_s, allreduce_seconds(gradient_bytes, n, bus_bw),
                      floor_s if n > 1 else 0.0)


def predict_layout(compute_s: float, gradient_bytes: float, layout: Layout, links: Links,
                   floor_s: float = 0.0) -> Prediction:
    return Prediction(compute_s, hierarchical_allreduce_seconds(gradient_bytes, layout, links),
                      floor_s if layout.processes > 1 else 0.0)


def measured_floor(step_s: float, compute_s: float, allreduce_s: float) -> Optional[float]:
    """The floor an N-process step shows: its time beyond the 1-process compute, when the timed
    allreduce is too small to account for it (None when the allreduce is most of that time).

    Near zero on GPU nodes, where spare cores drive the communication; tens of ms on a CPU.
    """
    beyond = max(0.0, step_s - compute_s)
    return None if allreduce_s > 0.5 * beyond else beyond


MIXED_PRECISION_HINT = ("; the GPUs have tensor cores: training.mixed_precision: true would cut "
                        "the compute")


def diagnose(measured: float, predicted: Prediction, gpu_util_mean: float | None = None,
             mixed_precision_pays: bool = False) -> str:
    """Which resource the gap points at, in one line.  Mixed precision is suggested only where
    it pays (``mixed_precision_pays``: tensor cores, and not on already) and the step is the
    GPUs' compute, not the network's or the input's."""
    comm_share = predicted.allreduce_s / predicted.step_serial_s
    hint = MIXED_PRECISION_HINT if mixed_precision_pays else ""
    if measured >= 0.9:
        return "scales well (efficiency >= 90%)" + hint
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
            "(on a shared CPU the processes also compete for cores and memory bandwidth)" + hint)
