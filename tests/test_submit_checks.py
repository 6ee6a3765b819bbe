"""Submission checks that need no running SLURM: what `harness submit` refuses, and why."""
from __future__ import annotations

import pytest

from conftest import REPO


def test_horovod_here_is_built_with_mpi_and_a_build_without_is_refused(monkeypatch):
    from harness import engines
    from slurm import submit as submission
    from slurm.cluster import load_cluster
    from harness.errors import UserError
    assert engines.mpi_linked("horovod")  # the real extension: srun --mpi=pmix needs it
    _, part = load_cluster("lars").partition("rtx2080ti")
    submission.check_launch(part, "horovod")
    monkeypatch.setattr(engines, "mpi_linked", lambda engine: False)
    with pytest.raises(UserError, match="built without MPI"):
        submission.check_launch(part, "horovod")
    submission.check_launch(part, "tf")  # joins over gRPC: no MPI build needed


def test_an_epoch_longer_than_the_allocation_is_refused(capsys):
    """Epoch time comes from the experiment's last run; here it is given, the rule is what is tested."""
    from slurm import submit as submission
    from harness.errors import UserError
    from harness.spec.loader import load_spec
    spec = load_spec(REPO / "jobs" / "synthetic.yaml", ["resources.time=00:05:00",
                                                        "checkpoint.every_epochs=4"])
    with pytest.raises(UserError, match=r"one epoch took 500 s in run 01234567, more than the 180 s"):
        submission.check_checkpoint_interval(spec, (500.0, "0123456789abcdef"))
    submission.check_checkpoint_interval(spec, (60.0, "0123456789abcdef"))  # 4 x 60 s > 180 s: a note
    assert "every_epochs<=3" in capsys.readouterr().err


def test_dev_slurm_on_a_machine_without_scontrol_is_down_not_an_error(monkeypatch, tmp_path):
    """A fresh machine has no SLURM: the fixture must go on to start.sh, which installs it."""
    from slurm_dev import DevSlurm
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: no scontrol, as before apt-get
    assert DevSlurm(tmp_path).up() is False


def test_sizes_of_a_scaling_run_are_launches_of_their_own(workdir):
    """`harness scale` queues its sizes from one process within a second: each job must train
    its own launch (its own checkpoint folder), never the one written for the size before."""
    from harness.runtime import launches
    from harness.spec.loader import load_spec
    folders = {launches.launch_folder(spec, launches.batch_manifest(spec, "sqlite:///mlflow.db"))
               for spec in (load_spec(REPO / "jobs" / "synthetic.yaml", [f"resources.nodes={n}",
                                                                          f"checkpoint.dir=np{n}"])
                            for n in (1, 2))}
    assert len(folders) == 2, folders
