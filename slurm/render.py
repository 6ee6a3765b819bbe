"""``render_sbatch(spec, cluster, ...) -> str``: the one place an sbatch script is written.

The script's text is the Jinja2 template the cluster profile names (default
``slurm/templates/sbatch.sh.j2``), so a site changes its script without touching Python.  This
module computes what goes into it, once: the ``#SBATCH`` options (process counts derived from
the spec and the partition, never typed twice), the environment and the launch line.  Pure: no
files written, no environment read beyond what is passed in.  Every value that comes from the
user is shell-quoted by the template's ``quote`` filter, so a job name or a ``--set`` value
cannot run a command.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import jinja2

from harness.engines import info as engine_info, venv_python
from harness.entrypoints import failure_command, prepare_command, worker_command
from harness.spec.schema import JobSpec
from slurm import options as extra_options
from slurm import preemption
from slurm.cluster import Cluster, Partition, check_fit, check_precision

COMMENT = "lars-harness"  # marks the harness's jobs for `harness status`
# --unbuffered: rank 0's epoch lines reach the log as they happen (tail -f works).
LAUNCHERS = {"srun-pmix": ["srun", "--mpi=pmix", "--unbuffered"],
             "srun-pmi2": ["srun", "--mpi=pmi2", "--unbuffered"]}


@dataclass(frozen=True)
class JobArray:
    """A sweep: one array task per point of the manifest, at most ``max_parallel`` at once; each
    task trains the point its SLURM_ARRAY_TASK_ID names."""
    size: int
    max_parallel: Optional[int]

    @property
    def option(self) -> str:
        return f"0-{self.size - 1}" + (f"%{self.max_parallel}" if self.max_parallel else "")


def sbatch_options(spec: JobSpec, cluster: Cluster, log_dir: Path, workdir: Path,
                   extra: Mapping[str, Optional[str]] = (), array: Optional[JobArray] = None) -> dict:
    """The #SBATCH options; every count derived from the spec and the partition once.

    ``extra`` (from ``--sbatch``) wins over the spec's ``resources.sbatch``, which wins over
    the profile's; none of them may set what the harness computes.
    """
    partition, part = check_fit(spec.resources, cluster)
    check_precision(spec.training, partition, part)
    gpus = spec.resources.gpus_per_node
    cpus_per_task = max(1, part.cpus_per_node // part.gpus_per_node)
    mem_gb = int(part.memory_gb * gpus / part.gpus_per_node)
    computed = {
        "job-name": spec.name, "partition": partition, "nodes": str(spec.resources.nodes),
        "ntasks-per-node": str(gpus), "cpus-per-task": str(cpus_per_task),
        "mem": f"{max(mem_gb, 1)}G", "time": spec.resources.time, "chdir": str(workdir),
        "output": str(log_dir / "%x-%j.out"), "error": str(log_dir / "%x-%j.err"),
        # A requeued job appends to the same logs instead of truncating the first attempt's.
        "open-mode": "append", "comment": COMMENT,
        "signal": preemption.sbatch_signal(), "requeue": None,
    }
    if part.gres:
        computed["gres"] = f"gpu:{gpus}"
    if array is not None:  # %A_%a: the array's id and the task's index, one log per point
        computed.update({"array": array.option, "output": str(log_dir / "%x-%A_%a.out"),
                         "error": str(log_dir / "%x-%A_%a.err")})
    site = extra_options.merged(cluster.sbatch_options(partition),
                                extra_options.check(spec.resources.sbatch, "resources.sbatch"),
                                dict(extra))
    return {**site, **computed}


def launch_command(spec: JobSpec, launch: str, cpus_per_task: str) -> list[str]:
    """srun (one task per GPU, the profile's MPI plugin) or mpirun, for every process."""
    r = spec.resources
    tasks = r.nodes * r.gpus_per_node
    own = engine_info(spec.training.engine).srun
    if own:  # an engine that does not join over MPI: its own srun line, whatever the profile says
        return list(own) + [f"--ntasks={tasks}", f"--ntasks-per-node={r.gpus_per_node}",
                            f"--cpus-per-task={cpus_per_task}"]
    if launch == "mpirun":
        # Horovod's MPI guide: no binding (a rank's threads use its cores), ranks fill the
        # allocation's slots (ntasks-per-node per node) in order.
        return ["mpirun", "-np", str(tasks), "--bind-to", "none", "--map-by", "slot"]
    # Since SLURM 22.05 srun no longer inherits --cpus-per-task from the batch allocation: without
    # it each rank may get one core while OMP_NUM_THREADS says more.
    return LAUNCHERS[launch] + [f"--ntasks={tasks}", f"--ntasks-per-node={r.gpus_per_node}",
                                f"--cpus-per-task={cpus_per_task}"]


def _exports(values: Mapping) -> str:
    return "\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in values.items())


def _environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    env.filters["exports"] = _exports
    env.filters["oneline"] = lambda value: " ".join(str(value).splitlines())
    return env


def render_sbatch(spec: JobSpec, cluster: Cluster, repo: Path, log_dir: Path,
                  manifest: Path, tracking_uri: str = "",
                  workdir: Path | None = None, extra: Mapping[str, Optional[str]] = (),
                  array: Optional[JobArray] = None, index: Optional[int] = None) -> str:
    """The script that trains the launch ``manifest``: its point ``index`` (default: the only
    one), or with ``array`` the point each task's index names.  The job runs in ``workdir``
    (default: the repository) with ``repo``'s venv.  The manifest says resume: a requeued job
    continues its checkpoint."""
    options = sbatch_options(spec, cluster, log_dir, workdir or repo, extra, array)
    _, part = cluster.partition(spec.resources.partition)
    python = venv_python(spec.training.engine, repo)
    r = spec.resources
    return _render(
        cluster, spec.spec_path, options, manifest, part,
        prepare=prepare_command(python, str(manifest), index),
        horovod={**engine_info(spec.training.engine).batch_env, **(part.horovod or {}),
                 **horovod_knobs(spec)},
        nccl={**(part.nccl or {}), **(spec.communication.nccl or {})}, tracking_uri=tracking_uri,
        shape=(r.nodes * r.gpus_per_node, r.nodes, r.gpus_per_node),
        launch=launch_command(spec, part.launch, options["cpus-per-task"])
        + worker_command(python, str(manifest), index),
        report_failure=failure_command(python, str(manifest), index))


def horovod_knobs(spec: JobSpec) -> dict:
    """The spec's Horovod tuning variables (the ranks set them too: a script shows them)."""
    return {k: v for k, v in spec.communication.environment().items() if k.startswith("HOROVOD_")}


def _render(cluster: Cluster, spec_path: str, options: dict, manifest: Path, part: Partition,
            prepare: list, horovod: Mapping, tracking_uri: str, shape: tuple, launch: list,
            report_failure: list, summarizes: str = "", nccl: Optional[Mapping] = None) -> str:
    """The cluster's template filled in: every script the harness queues goes through it, so a
    site's preamble (modules, proxies) reaches each one."""
    template = _environment(cluster.template.parent).get_template(cluster.template.name)
    tasks, nodes, per_node = shape
    return template.render(
        spec_path=spec_path, cluster=cluster.name, options=sorted(options.items()),
        manifest=str(manifest), prepare=prepare, preamble=cluster.preamble, summarizes=summarizes,
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "OMP_NUM_THREADS": options["cpus-per-task"],
             "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
             preemption.MAX_REQUEUES_ENV: str(part.max_requeues), **cpu_partition_env(part)},
        nccl=(part.nccl or {}) if nccl is None else nccl, horovod=horovod,
        tracking={"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {},
        tasks=tasks, nodes=nodes, per_node=per_node, launch=launch,
        requeue_tail=preemption.requeue_tail(" ".join(map(shlex.quote, report_failure))))


def cpu_partition_env(part: Partition) -> dict:
    """On a CPU-only partition the compute and the communication share a rank's cores, and
    Open MPI's progress loop spinning on them halved the 2-node efficiency of the dev cluster
    (42-54% against 84% with yielding).  GPU ranks keep the spin: it is their lowest latency."""
    return {} if part.gres else {"OMPI_MCA_mpi_yield_when_idle": "1"}  # harmless without MPI


def parse_sbatch_options(script: str) -> dict:
    """{option: value} from the #SBATCH lines (value None for flags), for tests and checks."""
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            options[key] = shlex.split(value)[0] if value else None
    return options


def render_summary_script(spec: JobSpec, cluster: Cluster, repo: Path, log_dir: Path,
                          workdir: Path, group_folder: Path, tracking_uri: str,
                          extra: Mapping[str, Optional[str]] = ()) -> str:
    """The one-core job that summarizes a sweep once its array has ended (afterany), through
    the same template as the training jobs.  Of the site's options it keeps where a job may run
    (account, QOS, reservation, constraint), not the training job's resources."""
    partition, part = cluster.partition(spec.resources.partition)
    site = {k: v for k, v in extra_options.merged(cluster.sbatch_options(partition),
                                                   dict(extra)).items()
            if k in ("account", "qos", "reservation", "constraint")}
    options = {**site, "job-name": f"{spec.name}-sweep-summary", "partition": partition,
               "ntasks": "1", "cpus-per-task": "1", "mem": "2G", "time": "00:15:00",
               "chdir": str(workdir), "output": str(log_dir / "%x-%j.out"),
               "open-mode": "append"}  # no harness comment: `harness status` shows the sweep
    python = venv_python(spec.training.engine, repo)
    return _render(cluster, spec.spec_path, options, group_folder / "launch.json", part,
                   prepare=[], horovod={}, tracking_uri=tracking_uri, shape=(1, 1, 1),
                   launch=[python, "-m", "harness.cli", "sweep", "--summarize", str(group_folder)],
                   report_failure=[], summarizes=str(group_folder))
