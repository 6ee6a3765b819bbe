"""Rendered sbatch scripts, tested as artefacts: #SBATCH lines agree, goldens, quoting."""
from __future__ import annotations

import dataclasses
import re
import os
import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import REPO
from slurm.cluster import load_cluster
from harness.errors import UserError
from harness.spec.loader import load_spec
from slurm.render import parse_sbatch_options, render_sbatch

GOLDEN = Path(__file__).parent / "golden"
LARS = load_cluster("lars")
MANIFEST = Path("/scratch/runs/lensfinder_cnn/launches/0123456789abcdef/launch.json")


def _render(partition, gpus, nodes=1, overrides=()):
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml",
                     [f"resources.partition={partition}", f"resources.gpus_per_node={gpus}",
                      f"resources.nodes={nodes}", "resources.time=01:00:00", *overrides])
    spec = dataclasses.replace(spec, spec_path="/opt/harness/jobs/lensfinder_cnn.yaml")
    return render_sbatch(spec, LARS, Path("/opt/harness"), Path("/scratch/logs"), MANIFEST)


@pytest.mark.parametrize("partition,gpus,nodes", [("rtx2080ti", 6, 2), ("gtx1080ti", 6, 1),
                                                  ("gtx1050ti", 1, 4)])
def test_golden_scripts_per_partition(partition, gpus, nodes):
    script = _render(partition, gpus, nodes=nodes)
    golden = GOLDEN / f"lensfinder_{partition}.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        # Rewriting never passes: review `git diff tests/golden`, then run without UPDATE_GOLDEN.
        golden.write_text(script)
        pytest.fail(f"rewrote {golden}; review the diff and rerun without UPDATE_GOLDEN")
    assert script == golden.read_text(), f"diff against {golden} (UPDATE_GOLDEN=1 rewrites it)"


def test_sbatch_lines_agree_with_each_other_and_the_launch_line():
    script = _render("rtx2080ti", 6, nodes=2)
    opts = parse_sbatch_options(script)
    assert opts["nodes"] == "2" and opts["ntasks-per-node"] == "6" and opts["gres"] == "gpu:6"
    assert opts["partition"] == "rtx2080ti" and opts["requeue"] is None
    assert opts["signal"] == "B:USR2@120" and opts["output"].endswith("%x-%j.out")
    launch = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--ntasks=12" in launch and "--ntasks-per-node=6" in launch and "--mpi=pmix" in launch
    # srun (SLURM >= 22.05) no longer inherits the allocation's CPUs per task: it is passed on.
    assert f"--cpus-per-task={opts['cpus-per-task']}" in launch.split()
    assert "export CUDA_DEVICE_ORDER=PCI_BUS_ID" in script and "export NCCL_P2P_DISABLE=1" in script


@pytest.mark.parametrize("flag,words", [
    (["resources.gpus_per_node=8"], "partition rtx2080ti has 6 GPUs per node"),
    (["resources.nodes=9"], "has 7 nodes"),
    (["resources.partition=a100"], "cluster lars has gtx1050ti, gtx1080ti, rtx2080ti"),
])
def test_requests_that_do_not_fit_are_refused(flag, words):
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml", flag)
    with pytest.raises(UserError, match=words):
        render_sbatch(spec, LARS, Path("/opt/h"), Path("/l"), MANIFEST)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda v: "\x00" not in v and "/" not in v))
def test_user_values_are_one_shell_word_each(value):
    """Whatever a path holds ($(...), quotes, ;, newlines: a working directory may), the worker
    and the data step get it as one word."""
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml")
    manifest = Path("/work") / value / "launch.json"
    script = render_sbatch(spec, LARS, Path("/opt/h"), Path("/l"), manifest)
    launch = script.split("\nsrun ", 1)[1].rsplit(" &\nstep=$!", 1)[0]
    words = shlex.split(launch)
    assert words[-2:] == ["--manifest", str(manifest)]
    prepare = script.split("before the ranks start\n", 1)[1].split("\n# --- launch", 1)[0]
    assert shlex.split(prepare)[-3:] == ["harness.runtime.prepare", "--manifest", str(manifest)]


# --------------------------------------------------------------------------- site options

def _profile(tmp_path, extra: str) -> Path:
    """The LARS profile plus site settings, as an administrator would write them."""
    path = tmp_path / "site.yaml"
    path.write_text((REPO / "slurm" / "clusters" / "lars.yaml").read_text() + extra)
    return path


def test_site_preamble_and_options_from_profile_spec_and_cli(tmp_path):
    cluster = load_cluster(str(_profile(tmp_path, (
        "preamble: |\n  module load cuda/12.2\n  source /opt/venvs/lars/bin/activate\n"
        "sbatch:\n  account: cbpf\n  qos: normal\n"))))
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml",
                     ["resources.sbatch={qos: long, constraint: turing}"])
    script = render_sbatch(spec, cluster, Path("/opt/h"), Path("/l"), MANIFEST,
                           extra={"reservation": "lecture day", "exclusive": None})
    opts = parse_sbatch_options(script)
    # profile < spec < command line, each option once
    assert opts["account"] == "cbpf" and opts["qos"] == "long" and opts["constraint"] == "turing"
    assert opts["reservation"] == "lecture day" and opts["exclusive"] is None
    assert "#SBATCH --reservation='lecture day'" in script
    lines = script.splitlines()
    preamble = lines.index("module load cuda/12.2")
    assert lines[preamble + 1] == "source /opt/venvs/lars/bin/activate"
    assert lines.index("set -euo pipefail") < preamble < next(
        i for i, line in enumerate(lines) if line.startswith("srun "))


def test_the_sweep_summary_job_goes_through_the_site_template(tmp_path):
    """Its preamble (modules, proxies) and where it may run reach the summary job too; not the
    training job's resources."""
    from slurm.render import render_summary_script
    cluster = load_cluster(str(_profile(tmp_path, (
        "preamble: |\n  module load python/3.11\nsbatch:\n  account: cbpf\n  exclusive: null\n"))))
    spec = load_spec(REPO / "jobs" / "diabetes_mlp.yaml", ["resources.gpus_per_node=4"])
    folder = Path("/scratch/runs/diabetes_mlp/sweeps/s-1")
    script = render_summary_script(spec, cluster, Path("/opt/h"), Path("/l"), Path("/w"), folder,
                                   "http://head:5000", {"qos": "short"})
    opts = parse_sbatch_options(script)
    assert opts["account"] == "cbpf" and opts["qos"] == "short" and "exclusive" not in opts
    assert opts["ntasks"] == "1" and opts["cpus-per-task"] == "1" and "gres" not in opts
    lines = script.splitlines()
    summarize = next(i for i, line in enumerate(lines) if "--summarize" in line)
    assert lines[summarize] == f"/opt/h/.venv/bin/python -m harness.cli sweep --summarize {folder} &"
    assert lines.index("set -euo pipefail") < lines.index("module load python/3.11") < summarize
    assert "export MLFLOW_TRACKING_URI=http://head:5000" in lines
    assert "srun" not in script and "harness.runtime.prepare" not in script


def test_a_scaling_runs_sizes_are_one_job_each_and_a_sweep_one_array(tmp_path):
    """A scaling run's sizes: each its own script, its own resources, and --index on every
    command that reads the manifest; a sweep (one shape): one array, no index."""
    from harness.group import cluster as group_cluster
    from harness.spec import manifest
    points = [manifest.Point(i, load_spec(REPO / "jobs" / "lensfinder_cnn.yaml",
                                          [f"resources.gpus_per_node={n}", "resources.nodes=1"]),
                             None, f"N={n}", {}, manifest.Layout(n)) for i, n in enumerate((1, 2))]
    launch = manifest.new("scale", points, manifest.Layout(1), "http://head:5000", True)
    path = tmp_path / "launch.json"
    jobs = group_cluster.render(launch, path, LARS, {}, None, array=False)
    assert [j.index for j in jobs] == [0, 1]
    for job, n in zip(jobs, (1, 2)):
        opts = parse_sbatch_options(job.script)
        assert opts["ntasks-per-node"] == str(n) and "array" not in opts
        for module in ("worker", "prepare", "failure"):
            assert f"-m harness.runtime.{module} --manifest {path} --index {job.index}" in job.script
    same = manifest.new("sweep", [points[1], dataclasses.replace(points[1], index=1)],
                        manifest.Layout(2), "", True)
    [array] = group_cluster.render(same, path, LARS, {}, 1, array=True)
    assert array.index is None and parse_sbatch_options(array.script)["array"] == "0-1%1"
    assert "--index" not in array.script
    # A job array gives every task one shape: a sweep over resources is refused, not rendered
    # with point 0's resources for all.
    with pytest.raises(UserError, match=r"point 1 \(N=2\): resources .* differ from point 0's"):
        group_cluster.render(launch, path, LARS, {}, None, array=True)


def test_a_site_template_replaces_the_script(tmp_path):
    (tmp_path / "container.sh.j2").write_text(
        "#!/bin/bash\n{% for k, v in options %}#SBATCH --{{ k }}{{ '' if v is none else '=' ~ (v | quote) }}\n"
        "{% endfor %}apptainer exec /images/tf.sif {{ launch | map('quote') | join(' ') }}\n")
    cluster = load_cluster(str(_profile(tmp_path, "template: container.sh.j2\n")))
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml")
    script = render_sbatch(spec, cluster, Path("/opt/h"), Path("/l"), Path("/l/$(rm -rf ~)/launch.json"))
    assert "apptainer exec /images/tf.sif srun --mpi=pmix" in script
    assert parse_sbatch_options(script)["partition"] == "rtx2080ti"
    assert "'/l/$(rm -rf ~)/launch.json'" in script  # the site template quotes as the default one does


@pytest.mark.parametrize("where,options,words", [
    ("spec", "{acount: physics}", "resources.sbatch.acount: not an sbatch option"),
    ("spec", "{time: '99:00:00'}", "resources.sbatch.time: set by resources.time (--time)"),
    ("spec", "{ntasks-per-node: 12}", "set by resources.gpus_per_node"),
    ("spec", "{qos: \"a\\nb\"}", "one line of text"),
    ("cli", "nodes=3", "--sbatch nodes: set by resources.nodes (--nodes)"),
    ("cli", "mail_user=me", "--sbatch mail_user: not an sbatch option"),
    ("profile", "sbatch:\n  signal: USR1@60\n", "sbatch.signal: set by the preemption protocol"),
    ("profile", "template: nowhere.j2\n", "template='nowhere.j2': no such file"),
    ("profile", "preamlbe: x\n", "preamlbe: unknown key"),
])
def test_bad_site_options_are_one_clear_error(tmp_path, where, options, words):
    from slurm import options as sbatch_options
    spec_sets = [f"resources.sbatch={options}"] if where == "spec" else []
    with pytest.raises(UserError, match=re.escape(words)):
        cluster = load_cluster(str(_profile(tmp_path, options))) if where == "profile" else LARS
        extra = sbatch_options.parse_cli([options]) if where == "cli" else {}
        render_sbatch(load_spec(REPO / "jobs" / "lensfinder_cnn.yaml", spec_sets), cluster,
                      Path("/opt/h"), Path("/l"), MANIFEST, extra=extra)


def test_the_signal_is_one_constant_for_directive_handler_and_trap():
    import signal

    from slurm import preemption
    script = _render("rtx2080ti", 6, nodes=2)
    name = signal.Signals(preemption.SIGNAL).name.removeprefix("SIG")
    assert parse_sbatch_options(script)["signal"] == f"B:{name}@{preemption.LEAD_S}"
    assert f"trap 'kill -{name} \"$step\" 2>/dev/null; trap : {name}' {name}" in script
    assert f"[[ $status == {preemption.EXIT_REQUEUE} ]]" in script


def test_mpirun_launch_follows_horovods_mpi_guide(tmp_path):
    profile = (REPO / "slurm" / "clusters" / "lars.yaml").read_text().replace(
        "launch: srun-pmix               # srun --mpi=pmix; ASSUMPTION: SLURM built with PMIx",
        "launch: mpirun")
    (tmp_path / "mpi.yaml").write_text(profile)
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml", ["resources.nodes=2"])
    script = render_sbatch(spec, load_cluster(str(tmp_path / "mpi.yaml")), Path("/opt/h"), Path("/l"), MANIFEST)
    launch = shlex.split(next(line for line in script.splitlines() if line.startswith("mpirun ")))
    assert launch[:8] == ["mpirun", "-np", "12", "--bind-to", "none", "--map-by", "slot",
                          "/opt/h/.venv/bin/python"]


def test_mpi_yields_the_core_on_a_cpu_partition_only():
    """CPU ranks share their cores with Open MPI's progress loop: it must yield, not spin."""
    lars = load_cluster("lars")
    spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml")
    gpu = render_sbatch(spec, lars, Path("/opt/h"), Path("/l"), MANIFEST)
    cpu_only = dataclasses.replace(lars, partitions={
        name: dataclasses.replace(part, gres=False) for name, part in lars.partitions.items()})
    cpu = render_sbatch(spec, cpu_only, Path("/opt/h"), Path("/l"), MANIFEST)
    assert "export OMPI_MCA_mpi_yield_when_idle=1" in cpu
    assert "OMPI_MCA_mpi_yield_when_idle" not in gpu


def test_the_tf_engine_launches_with_srun_and_its_own_environment():
    """No MPI plugin and no Horovod settings; --kill-on-bad-exit stops the step when one worker
    dies; the worker is the tf environment's Python, whatever the profile's MPI launch says."""
    for launch in ("srun-pmix", "mpirun"):
        profile = dataclasses.replace(LARS, partitions={
            name: dataclasses.replace(part, launch=launch) for name, part in LARS.partitions.items()})
        spec = load_spec(REPO / "jobs" / "lensfinder_cnn.yaml", ["training.engine=tf", "resources.nodes=2"])
        script = render_sbatch(spec, profile, Path("/opt/h"), Path("/l"), MANIFEST)
        launch_line = shlex.split(next(line for line in script.splitlines()
                                       if line.startswith(("srun ", "mpirun "))))
        assert launch_line[:4] == ["srun", "--mpi=none", "--unbuffered", "--kill-on-bad-exit=1"]
        assert "--ntasks=12" in launch_line and "--ntasks-per-node=6" in launch_line
        assert launch_line[launch_line.index("-m") - 1] == "/opt/h/.venv-tf/bin/python"
        assert "HOROVOD_" not in script and "--mpi=pmix" not in script
