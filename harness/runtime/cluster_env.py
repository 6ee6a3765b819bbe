"""Where this process sits in the job: rank, size, local rank and local size, from whoever
started it.

Every launcher the harness uses says so in its own variables: ``horovodrun`` (``HOROVOD_RANK``
...), ``mpirun`` (``OMPI_COMM_WORLD_RANK`` ...), ``srun`` (``SLURM_PROCID`` ...), and the local
launcher of the tf engine (``TF_CONFIG``).  The innermost launcher wins: a job step's
``SLURM_LOCALID`` is the same for every rank that ``mpirun`` (or ``horovodrun``) starts inside
it.  This module is the one place those variables are read; an engine joins its job by its
own means and ``cross_check`` turns a disagreement into one loud error with a hint.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from harness.errors import RunFailed
from slurm.environment import SlurmEnvironment

# Set by mpirun (Open MPI), by srun --mpi=pmix (PMIx) and --mpi=pmi2 / MPICH (PMI).
MPI_WORLD_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE")
# Each launcher's (rank, size, local rank) variables, to name in an error.
VARIABLES = {"horovodrun": ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
             "mpirun": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
             "srun": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
             "tf_config": ("TF_CONFIG task index", "TF_CONFIG workers", "TF_CONFIG same-host index")}


@dataclass(frozen=True)
class ClusterEnvironment:
    rank: int
    size: int
    local_rank: int
    local_size: int
    launcher: str  # horovodrun | mpirun | srun | tf_config | single
    mpi_world: bool  # an MPI world exists (mpirun, srun's MPI plugin): mpi4py may join it
    slurm: SlurmEnvironment  # the job's SLURM facts (job id, restarts, array), where there are

    @classmethod
    def detect(cls, env: Mapping[str, str] = os.environ) -> "ClusterEnvironment":
        slurm = SlurmEnvironment.from_env(env)
        mpi_world = any(env.get(k) for k in MPI_WORLD_VARS)
        # Innermost first: horovodrun, mpirun and the tf engine's local launcher (TF_CONFIG)
        # may all run inside a SLURM allocation, whose variables their processes inherit.
        for launcher, read in (("horovodrun", _horovodrun), ("mpirun", _mpirun),
                               ("tf_config", _tf_config), ("srun", _srun)):
            found = read(env, slurm)
            if found is not None:
                return cls(*found, launcher=launcher, mpi_world=mpi_world, slurm=slurm)
        return cls(0, 1, 0, 1, "single", mpi_world, slurm)

    @property
    def under_slurm(self) -> bool:
        """Inside a SLURM job step: SLURM may send the preemption warning."""
        return self.slurm.in_step

    def cross_check(self, rank: int, size: int, local_rank: int) -> None:
        """Fail with a hint when the engine's view of the job disagrees with the launcher's."""
        if self.launcher == "single":
            return
        rank_var, size_var, local_var = VARIABLES[self.launcher]
        if size != self.size:
            raise RunFailed(
                f"the engine joined {size} process(es) but {size_var}={self.size} ({self.launcher}): "
                "the processes did not join one job. HINT: under srun launch with the "
                "partition's --mpi plugin and an engine built with MPI (horovodrun --check-build "
                "shows [X] MPI), or with horovodrun inside the allocation")
        if (rank, local_rank) != (self.rank, self.local_rank):
            raise RunFailed(
                f"the engine placed this process at rank {rank}, local rank {local_rank}, but "
                f"{rank_var}={self.rank}, {local_var}={self.local_rank} ({self.launcher}): ranks "
                "are mapped to nodes differently from the launcher's. HINT: use "
                "--ntasks-per-node equal to the GPUs per node and do not mix srun and mpirun")


def _int(env: Mapping[str, str], key: str) -> Optional[int]:
    value = env.get(key, "")
    return int(value) if value.isdigit() else None


def _four(env: Mapping[str, str], keys: tuple) -> Optional[tuple]:
    values = tuple(_int(env, k) for k in keys)
    return None if None in values else values


def _horovodrun(env, slurm):
    return _four(env, ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE"))


def _mpirun(env, slurm):
    return _four(env, ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                       "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"))


def _srun(env, slurm: SlurmEnvironment):
    if not slurm.in_step:
        return None
    return slurm.procid, slurm.ntasks, slurm.localid or 0, slurm.tasks_per_node or 1


def _tf_config(env, slurm):
    """TF_CONFIG's worker list: the rank is the task index; processes whose address names the
    same host are one node (the local launcher's workers are all ``localhost``)."""
    raw = env.get("TF_CONFIG")
    if not raw:
        return None
    config = json.loads(raw)
    workers = config.get("cluster", {}).get("worker", [])
    rank = int(config.get("task", {}).get("index", 0))
    if not workers:
        return None
    hosts = [address.rpartition(":")[0] for address in workers]
    mine = hosts[rank]
    same_node = [i for i, host in enumerate(hosts) if host == mine]
    return rank, len(workers), same_node.index(rank), len(same_node)
