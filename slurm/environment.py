"""A read-only view of the SLURM variables a job step sees: the job, its array task, its
restarts, and the step's tasks (harness/runtime/cluster_env.py reads a process's rank from it,
and from whichever launcher started it)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional



def _int(env: Mapping[str, str], key: str) -> Optional[int]:
    value = env.get(key)
    return int(value) if value not in (None, "") and value.isdigit() else None


def _first_count(value: Optional[str]) -> Optional[int]:
    """SLURM's compressed counts: "2(x3)" or "2,1" -> 2 (the first node's)."""
    head = (value or "").split("(")[0].split(",")[0]
    return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class SlurmEnvironment:
    job_id: Optional[str] = None
    ntasks: Optional[int] = None
    procid: Optional[int] = None
    localid: Optional[int] = None
    nodelist: Optional[str] = None
    array_job_id: Optional[str] = None
    array_task_id: Optional[str] = None
    restart_count: int = 0
    tasks_per_node: Optional[int] = None  # this node's tasks ("2(x3)" and "2,1" read as 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "SlurmEnvironment":
        return cls(
            job_id=env.get("SLURM_JOB_ID"),
            ntasks=_int(env, "SLURM_NTASKS"),
            procid=_int(env, "SLURM_PROCID"),
            localid=_int(env, "SLURM_LOCALID"),
            nodelist=env.get("SLURM_JOB_NODELIST"),
            array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            restart_count=_int(env, "SLURM_RESTART_COUNT") or 0,
            tasks_per_node=_first_count(env.get("SLURM_NTASKS_PER_NODE")
                                        or env.get("SLURM_STEP_TASKS_PER_NODE")),
        )

    @property
    def in_step(self) -> bool:
        """True inside an srun job step (tasks known), not merely inside an allocation."""
        return self.job_id is not None and self.ntasks is not None and self.procid is not None

    def tags(self) -> dict:
        """MLflow tags for the run (only the ones that are set)."""
        tags = {"slurm.job_id": self.job_id, "slurm.nodelist": self.nodelist,
                "slurm.array_job_id": self.array_job_id, "slurm.array_task_id": self.array_task_id}
        return {k: v for k, v in tags.items() if v}
