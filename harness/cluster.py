"""Cluster profiles (slurm/clusters/<name>.yaml): partitions, their GPUs, limits and launch method."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.loader import read_yaml
from harness.spec import FieldError, ResourcesSpec, build, doc, slurm_time_seconds

CLUSTERS_DIR = Path(__file__).resolve().parents[1] / "slurm" / "clusters"
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
    nccl: Any = field(default=None, metadata=doc("NCCL environment variables"))
    gres: bool = field(default=True, metadata=doc(
        "request GPUs with --gres=gpu:G; false on a CPU-only partition (gpus_per_node = processes)"))

    def __post_init__(self):
        if self.launch not in LAUNCH_METHODS:
            raise FieldError("launch", self.launch, "use one of " + ", ".join(LAUNCH_METHODS))
        if slurm_time_seconds(self.max_time) is None:
            raise FieldError("max_time", self.max_time, "use HH:MM:SS or D-HH:MM:SS")

    @property
    def max_seconds(self) -> int:
        return slurm_time_seconds(self.max_time)


@dataclass(frozen=True)
class Cluster:
    name: str
    default_partition: str
    partitions: dict

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
    raw = read_yaml(path)
    parts = raw.get("partitions")
    if not isinstance(parts, dict) or not parts:
        raise UserError(f"{path}: partitions: expected a mapping of partition names")
    try:
        partitions = {k: build(Partition, v, f"partitions.{k}") for k, v in parts.items()}
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    cluster = Cluster(str(raw.get("name", path.stem)), str(raw.get("default_partition", "")), partitions)
    cluster.partition(cluster.default_partition)  # the default must exist
    return cluster


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
