"""Cluster profiles (slurm/clusters/<name>.yaml): partitions, their GPUs, limits and launch method."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from slurm import options
from slurm.preemption import DEFAULT_MAX_REQUEUES
from harness.spec.loader import read_yaml
from harness.spec.schema import (MIXED_PRECISION_MIN_CC, FieldError, ResourcesSpec, TrainingSpec,
                                 build, doc, slurm_time_seconds)

CLUSTERS_DIR = Path(__file__).resolve().parent / "clusters"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES_DIR / "sbatch.sh.j2"
PROFILE_KEYS = ("name", "default_partition", "partitions", "template", "preamble", "sbatch")
LAUNCH_METHODS = ("srun-pmix", "srun-pmi2", "mpirun")


@dataclass(frozen=True)
class Partition:
    nodes: int = field(metadata=doc("nodes in the partition"))
    gpus_per_node: int = field(metadata=doc("GPUs per node"))
    gpu_model: str = field(metadata=doc("NVML name of the GPU"))
    gpu_memory_gb: float = field(metadata=doc("memory per GPU, GB"))
    cpus_per_node: int = field(metadata=doc("CPU cores per node"))
    memory_gb: float = field(metadata=doc("RAM per node, GB"))
    max_time: str = field(metadata=doc("the partition's time limit"))
    launch: str = field(default="srun-pmix", metadata=doc("srun-pmix, srun-pmi2 or mpirun"))
    compute_capability: str = field(default="", metadata=doc(
        "the GPUs' CUDA compute capability, e.g. \"7.5\"; below 7.0 (Pascal) mixed precision "
        "is refused; empty: unknown"))
    nccl: Any = field(default=None, metadata=doc("NCCL environment variables"))
    horovod: Any = field(default=None, metadata=doc(
        "Horovod tuning variables for this partition, e.g. {HOROVOD_FUSION_THRESHOLD: 67108864}; "
        "a spec's communication settings win"))
    gres: bool = field(default=True, metadata=doc(
        "request GPUs with --gres=gpu:G; false on a CPU-only partition (gpus_per_node = processes)"))
    sbatch: Any = field(default=None, metadata=doc(
        "extra sbatch options for this partition, e.g. {constraint: turing}"))
    max_requeues: int = field(default=DEFAULT_MAX_REQUEUES, metadata=doc(
        "requeues (preemptions, time limits) after which a job ends FAILED instead; 0..1000"))
    # The communication model's links (harness scale --predict); 0 = unknown.  `harness probe`
    # measures them: on one node for intra, with one process on each of two nodes for inter.
    intra_node_GBps: float = field(default=0.0, metadata=doc(
        "allreduce bus bandwidth among one node's GPUs, GB/s (0: unknown)"))
    inter_node_GBps: float = field(default=0.0, metadata=doc(
        "allreduce bus bandwidth between nodes over the network, GB/s (0: unknown)"))
    intra_node_latency_us: float = field(default=0.0, metadata=doc(
        "latency of one ring step inside a node, microseconds"))
    inter_node_latency_us: float = field(default=0.0, metadata=doc(
        "latency of one ring step between nodes, microseconds"))

    def __post_init__(self):
        if self.launch not in LAUNCH_METHODS:
            raise FieldError("launch", self.launch, "use one of " + ", ".join(LAUNCH_METHODS))
        if slurm_time_seconds(self.max_time) is None:
            raise FieldError("max_time", self.max_time, "use HH:MM:SS or D-HH:MM:SS")
        if self.compute_capability and not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise FieldError("compute_capability", self.compute_capability,
                             "use MAJOR.MINOR as NVIDIA lists it, e.g. \"7.5\"")
        for name, value in (self.horovod or {}).items():
            if not re.fullmatch(r"HOROVOD_[A-Z0-9_]+", str(name)):
                raise FieldError(f"horovod.{name}", value, "names start with HOROVOD_")
        if not 0 <= self.max_requeues <= 1000:
            raise FieldError("max_requeues", self.max_requeues, "use 0..1000")
        for name in ("intra_node_GBps", "inter_node_GBps", "intra_node_latency_us",
                     "inter_node_latency_us"):
            if not 0 <= getattr(self, name) < 1e4:
                raise FieldError(name, getattr(self, name), "use a number >= 0 (0: unknown)")

    @property
    def max_seconds(self) -> int:
        return slurm_time_seconds(self.max_time)


@dataclass(frozen=True)
class Cluster:
    name: str
    default_partition: str
    partitions: dict
    template: Path = DEFAULT_TEMPLATE  # the Jinja2 sbatch template
    preamble: str = ""  # site shell lines before the launch: module load, conda activate ...
    sbatch: dict = field(default_factory=dict)  # extra sbatch options for every job

    def sbatch_options(self, partition: str) -> dict:
        """The profile's extra sbatch options for a partition (the partition's win)."""
        return options.merged(self.sbatch, self.partitions[partition].sbatch or {})

    def partition(self, name: str) -> tuple[str, Partition]:
        name = name or self.default_partition
        if name not in self.partitions:
            raise UserError(f"resources.partition={name!r}: cluster {self.name} has "
                            f"{', '.join(sorted(self.partitions))} (choose with --partition)")
        return name, self.partitions[name]


def load_cluster(name: str = "") -> Cluster:
    """--cluster NAME, else $HARNESS_CLUSTER, else lars; a path to a YAML file works too."""
    name = name or os.environ.get("HARNESS_CLUSTER", "lars")
    path = Path(name) if name.endswith((".yaml", ".yml")) else CLUSTERS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml")))
        raise UserError(f"--cluster {name!r}: no profile {path}; known clusters: {known}")
    try:
        cluster = _profile(read_yaml(path), path)
        cluster.partition(cluster.default_partition)  # the default must exist
    except UserError as e:
        raise UserError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None
    return cluster


def _profile(raw: dict, path: Path) -> Cluster:
    unknown = sorted(set(map(str, raw)) - set(PROFILE_KEYS))
    if unknown:
        raise UserError(f"{unknown[0]}: unknown key; valid keys: {', '.join(PROFILE_KEYS)}")
    parts = raw.get("partitions")
    if not isinstance(parts, dict) or not parts:
        raise UserError("partitions: expected a mapping of partition names")
    partitions = {k: build(Partition, v, f"partitions.{k}") for k, v in parts.items()}
    for k, part in partitions.items():
        options.check(part.sbatch, f"partitions.{k}.sbatch")
    preamble = raw.get("preamble") or ""
    if not isinstance(preamble, str):
        raise UserError(f"preamble={preamble!r}: expected shell lines as a YAML block (preamble: |)")
    return Cluster(str(raw.get("name", path.stem)), str(raw.get("default_partition", "")),
                   partitions, template=_template(raw.get("template"), path),
                   preamble=preamble.rstrip("\n"), sbatch=options.check(raw.get("sbatch"), "sbatch"))


def _template(name, profile: Path) -> Path:
    """The profile's template: a path relative to the profile, or a name in slurm/templates/."""
    if not name:
        return DEFAULT_TEMPLATE
    for candidate in (profile.parent / str(name), TEMPLATES_DIR / str(name)):
        if candidate.is_file():
            return candidate.resolve()
    known = ", ".join(sorted(p.name for p in TEMPLATES_DIR.glob("*.j2")))
    raise UserError(f"template={name!r}: no such file beside the profile or in {TEMPLATES_DIR} "
                    f"(there: {known})")


def check_precision(training: TrainingSpec, name: str, part: Partition) -> None:
    """Mixed precision only where float16 pays: refused on a Pascal partition (exit 2)."""
    if not (training.mixed_precision and part.compute_capability):
        return
    major, minor = map(int, part.compute_capability.split("."))
    if (major, minor) < MIXED_PRECISION_MIN_CC:
        raise UserError(
            f"training.mixed_precision=true: partition {name} ({part.gpu_model}, compute "
            f"capability {part.compute_capability}) has no tensor cores and runs float16 at a "
            "fraction of float32's speed; use false there, or a partition of compute capability "
            ">= 7.0")


def check_fit(resources: ResourcesSpec, cluster: Cluster) -> tuple[str, Partition]:
    """The request fits the partition, or exit 2 naming the field, value and limit."""
    name, part = cluster.partition(resources.partition)
    if resources.gpus_per_node > part.gpus_per_node:
        raise UserError(f"resources.gpus_per_node={resources.gpus_per_node}: partition {name} has "
                        f"{part.gpus_per_node} GPUs per node; use 1..{part.gpus_per_node}")
    if resources.gpus_per_node < 1:
        raise UserError(f"resources.gpus_per_node=0: partition {name} needs one process per GPU; "
                        f"use 1..{part.gpus_per_node}")
    if resources.nodes > part.nodes:
        raise UserError(f"resources.nodes={resources.nodes}: partition {name} has {part.nodes} "
                        f"nodes; use 1..{part.nodes}")
    if resources.time_seconds > part.max_seconds:
        raise UserError(f"resources.time={resources.time!r}: partition {name} allows at most "
                        f"{part.max_time}")
    return name, part
