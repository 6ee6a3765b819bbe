"""``render_sbatch(spec, cluster, ...) -> str``: the one place an sbatch script is written.

Pure: no files, no environment reads beyond what is passed in.  Process
counts are computed once here; every value that comes from the user is
shell-quoted, so a job name or ``--set`` value cannot run a command.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from harness.cluster import Cluster, check_fit
from harness.preemption import EXIT_REQUEUE
from harness.spec import JobSpec

SIGNAL = "USR2"  # NCCL may catch USR1; USR2 is what submitit uses for preemption
SIGNAL_LEAD_S = 120  # the last batch, a checkpoint write and the metric flush must fit in this
COMMENT = "lars-harness"  # marks the harness's jobs for `harness status`
HOROVOD_ENV = {"HOROVOD_STALL_CHECK_TIME_SECONDS": "60", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
               "HOROVOD_GLOO_TIMEOUT_SECONDS": "120"}
# --unbuffered: rank 0's epoch lines reach the log as they happen (tail -f works).
LAUNCHERS = {"srun-pmix": ["srun", "--mpi=pmix", "--unbuffered"],
             "srun-pmi2": ["srun", "--mpi=pmi2", "--unbuffered"]}


def sbatch_options(spec: JobSpec, cluster: Cluster, log_dir: Path, workdir: Path) -> dict:
    """The #SBATCH options; every count derived from the spec and the partition once."""
    partition, part = check_fit(spec.resources, cluster)
    gpus = spec.resources.gpus_per_node
    cpus_per_task = max(1, part.cpus_per_node // part.gpus_per_node)
    mem_gb = int(part.memory_gb * gpus / part.gpus_per_node)
    options = {
        "job-name": spec.name, "partition": partition, "nodes": str(spec.resources.nodes),
        "ntasks-per-node": str(gpus), "cpus-per-task": str(cpus_per_task),
        "mem": f"{max(mem_gb, 1)}G", "time": spec.resources.time, "chdir": str(workdir),
        "output": str(log_dir / "%x-%j.out"), "error": str(log_dir / "%x-%j.err"),
        # A requeued job appends to the same logs instead of truncating the first attempt's.
        "open-mode": "append", "comment": COMMENT,
        "signal": f"B:{SIGNAL}@{SIGNAL_LEAD_S}", "requeue": None,
    }
    if part.gres:
        options["gres"] = f"gpu:{gpus}"
    return options


REQUEUE_TAIL = [
    "# SLURM warns this shell (B:) before preemption or the time limit: pass it on to the step,",
    "# whose ranks stop after the same batch, checkpoint and exit with "
    f"{EXIT_REQUEUE}.",
    f"trap 'kill -{SIGNAL} \"$step\" 2>/dev/null' {SIGNAL}",
    'status=""',
    'while [[ -z $status ]]; do  # a trapped signal interrupts wait: wait until the step ends',
    '    if wait "$step"; then status=0; else rc=$?; kill -0 "$step" 2>/dev/null || status=$rc; fi',
    "done",
    f'if [[ $status == {EXIT_REQUEUE} ]]; then',
    '    echo "harness: preempted; checkpoint written; requeueing job $SLURM_JOB_ID" >&2',
    '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
    "fi",
    'exit "$status"',
]


def _exports(values: dict) -> list[str]:
    return [f"export {k}={shlex.quote(str(v))}" for k, v in values.items()]


def render_sbatch(spec: JobSpec, cluster: Cluster, repo: Path, log_dir: Path,
                  overrides: Sequence[str] = (), tracking_uri: str = "",
                  workdir: Path | None = None) -> str:
    """The script; the job runs in ``workdir`` (default: the repository) with ``repo``'s venv."""
    options = sbatch_options(spec, cluster, log_dir, workdir or repo)
    _, part = cluster.partition(spec.resources.partition)
    tasks = spec.resources.nodes * spec.resources.gpus_per_node
    header = [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={shlex.quote(v)}"
              for k, v in sorted(options.items())]
    worker = [str(repo / ".venv" / "bin" / "python"), "-m", "harness.worker", spec.spec_path]
    for override in overrides:
        worker += ["--set", override]
    worker.append("--resume")  # a requeued job continues from its checkpoint
    if part.launch == "mpirun":
        launch = ["mpirun", "-np", str(tasks), "--map-by", f"ppr:{spec.resources.gpus_per_node}:node"]
    else:
        launch = LAUNCHERS[part.launch] + [f"--ntasks={tasks}",
                                           f"--ntasks-per-node={spec.resources.gpus_per_node}"]
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "OMP_NUM_THREADS": options["cpus-per-task"],
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    lines = [
        "#!/bin/bash",
        f"# Rendered by `harness render` from {spec.spec_path} for cluster {cluster.name}.",
        "# Edit the spec or the cluster profile, not this file.",
        *header,
        "",
        "set -euo pipefail",
        "# --- environment",
        *_exports(env),
        "# --- network (cluster profile)",
        *_exports(part.nccl or {}),
        "# --- Horovod: report stalls, and fail rather than hang when a rank is lost",
        *_exports(HOROVOD_ENV),
        "# --- tracking",
        *_exports({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}),
        f"# --- launch: {tasks} processes = {spec.resources.nodes} node(s) x "
        f"{spec.resources.gpus_per_node} process(es)",
        'export HARNESS_SBATCH_SCRIPT="$0"  # logged with the run',
        f"{shlex.join(launch + worker)} &",
        "step=$!",
        *REQUEUE_TAIL,
    ]
    return "\n".join(lines) + "\n"


def parse_sbatch_options(script: str) -> dict:
    """{option: value} from the #SBATCH lines (value None for flags), for tests and checks."""
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            options[key] = shlex.split(value)[0] if value else None
    return options
