"""Where a process is (every launcher's variables, the cross-check) and the launcher's reading
of horovodrun's output."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import sys

import pytest

from harness.errors import RunFailed
from harness.runtime.cluster_env import ClusterEnvironment
from harness.runtime.launcher import FailureReport, launch_command, relay
from slurm.environment import SlurmEnvironment

STEP = {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "lars[01-02]", "SLURM_RESTART_COUNT": "2"}


def test_slurm_environment_reads_variables_once():
    env = SlurmEnvironment.from_env(STEP)
    assert (env.job_id, env.ntasks, env.localid, env.restart_count) == ("42", 4, 1, 2)
    assert env.tags() == {"slurm.job_id": "42", "slurm.nodelist": "lars[01-02]"}
    assert not SlurmEnvironment.from_env({}).in_step


def test_gloo_only_horovod_under_srun_fails_loudly():
    """A Gloo-only Horovod started by srun: every task is its own job of size 1."""
    placement = ClusterEnvironment.detect(STEP)
    assert (placement.launcher, placement.rank, placement.size, placement.local_rank) == ("srun", 1, 4, 1)
    with pytest.raises(RunFailed, match=r"joined 1 process\(es\) but SLURM_NTASKS=4 \(srun\).*HINT"):
        placement.cross_check(rank=0, size=1, local_rank=0)
    with pytest.raises(RunFailed, match="SLURM_PROCID=1, SLURM_LOCALID=1"):
        placement.cross_check(rank=1, size=4, local_rank=0)
    assert placement.cross_check(rank=1, size=4, local_rank=1) is None  # agrees
    alone = ClusterEnvironment.detect({})
    assert (alone.launcher, alone.size) == ("single", 1) and not alone.under_slurm
    assert alone.cross_check(rank=0, size=1, local_rank=0) is None


def test_the_innermost_launcher_answers_where_a_process_is():
    """mpirun (or horovodrun) inside a job step: every rank inherits the step's SLURM_LOCALID=0,
    and the launcher that started the process knows better."""
    mpirun = dict(STEP, SLURM_LOCALID="0", OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_SIZE="4",
                  OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_LOCAL_SIZE="2")
    placement = ClusterEnvironment.detect(mpirun)
    assert (placement.launcher, placement.rank, placement.local_rank, placement.local_size) == (
        "mpirun", 3, 1, 2)
    assert placement.mpi_world and placement.under_slurm and placement.slurm.job_id == "42"
    horovodrun = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1",
                  "HOROVOD_LOCAL_SIZE": "2"}
    placement = ClusterEnvironment.detect(horovodrun)
    assert (placement.launcher, placement.rank, placement.size) == ("horovodrun", 1, 2)
    assert not placement.mpi_world and not placement.under_slurm


def test_tf_config_workers_on_one_host_are_one_node():
    config = {"cluster": {"worker": ["nodeA:2000", "nodeA:2001", "nodeB:2000"]},
              "task": {"type": "worker", "index": 1}}
    placement = ClusterEnvironment.detect({"TF_CONFIG": json.dumps(config)})
    assert (placement.launcher, placement.rank, placement.size) == ("tf_config", 1, 3)
    assert (placement.local_rank, placement.local_size) == (1, 2)
    config["task"]["index"] = 2
    third = ClusterEnvironment.detect({"TF_CONFIG": json.dumps(config)})
    assert (third.local_rank, third.local_size) == (0, 1)
    # `harness run --np 3` inside a batch job: the launcher's TF_CONFIG, not the batch step's
    inside = ClusterEnvironment.detect(dict(STEP, TF_CONFIG=json.dumps(config)))
    assert (inside.launcher, inside.rank, inside.size) == ("tf_config", 2, 3) and inside.under_slurm


def test_relay_strips_rank0_prefix_and_names_other_ranks():
    out, report = io.StringIO(), FailureReport()
    relay("[0]<stdout>:epoch 1/3  loss 0.5", report, out)
    relay("[1]<stderr>:Traceback (most recent call last):", report, out)
    assert out.getvalue().splitlines() == ["epoch 1/3  loss 0.5", "[rank 1] Traceback (most recent call last):"]


def test_failure_report_names_the_first_failed_rank():
    out, report = io.StringIO(), FailureReport()
    for line in ["Process 1 exit with status code -9.", "Terminating remaining workers after failure of Process 1.",
                 "Traceback (most recent call last):", "RuntimeError: Horovod detected ...",
                 "Process name: 1", "Exit code: -9"]:
        relay(line, report, out)
    assert report.describe(1) == (f"rank 1 on {socket.gethostname()} failed first (killed by "
                                  "signal 9); the other ranks were stopped")
    assert "Traceback" not in out.getvalue() and "Process 1 exit" in out.getvalue()


def test_one_process_runs_without_horovodrun():
    assert launch_command(1, ["python", "-m", "harness.runtime.worker", "s.yaml"])[0] == "python"
    cmd = launch_command(2, ["python", "w"])
    assert cmd[0].endswith("horovodrun") and cmd[1:6] == ["--gloo", "-np", "2", "-H", "localhost:2"]


def test_preemption_check_interval_is_cheap_and_prompt():
    from slurm.preemption import check_interval
    assert check_interval(step_s=0.5, check_s=0.001) == 1  # slow steps: check every batch
    assert check_interval(step_s=0.005, check_s=0.002) == 40  # 2 ms check <= 1% of 40 x 5 ms
    assert check_interval(step_s=0.001, check_s=1.0) == 10_000  # capped: react within 10 s
    assert check_interval(step_s=0.0, check_s=0.01) == 1


def test_the_warning_signal_sets_a_flag_only_and_reset_clears_it():
    import os
    import signal

    from slurm import preemption
    previous = {s: signal.getsignal(s) for s in (preemption.SIGNAL, signal.SIGTERM, signal.SIGINT)}
    try:
        preemption.install(in_slurm_step=True)
        assert not preemption.requested()
        os.kill(os.getpid(), preemption.SIGNAL)  # what srun passes on from SLURM's warning
        assert preemption.requested() and not preemption.terminating()
        preemption.reset()
        assert not preemption.requested()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_sigterm_in_a_slurm_step_stops_cleanly_and_elsewhere_interrupts():
    """SLURM preempts (and scancel stops) with SIGTERM: in a step it is a stop request the ranks
    agree on; on a workstation it is Ctrl-C's cousin and interrupts at once."""
    import os
    import signal

    from slurm import preemption
    previous = {s: signal.getsignal(s) for s in (preemption.SIGNAL, signal.SIGTERM, signal.SIGINT)}
    try:
        preemption.reset()
        preemption.install(in_slurm_step=True)
        os.kill(os.getpid(), signal.SIGTERM)
        name, since = preemption.stopped_by()
        assert preemption.requested() and name == "SIGTERM" and 0 <= since < 5
        preemption.reset()
        preemption.install(in_slurm_step=False)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.terminating() and not preemption.requested()
    finally:
        preemption.reset()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_requeue_cap_comes_from_the_profile_through_the_script():
    from slurm import preemption
    assert preemption.requeue_cap({}) == preemption.DEFAULT_MAX_REQUEUES
    assert preemption.requeue_cap({preemption.MAX_REQUEUES_ENV: "2"}) == 2


# srun's own words when tasks end badly, as they appear in a job's error file (SLURM 22.05).
SRUN_ERR = """\
2026-11-29 03:20:01 epoch 1/8 ...
[rank 1] Traceback (most recent call last):
srun: error: lars-n3: task 1: Killed
srun: launch/slurm: _step_signal: Terminating StepId=4242.0
srun: error: lars-n1: tasks 0,2-3: Exited with exit code 1
"""


def test_the_first_rank_srun_reports_is_named_as_the_local_launcher_names_it():
    from harness.runtime.failure import first_failed_task, sentence
    rank, host, how = first_failed_task(SRUN_ERR)
    assert (rank, host, how) == (1, "lars-n3", "killed by signal 9")
    assert sentence(rank, host, how) == ("rank 1 on lars-n3 failed first (killed by signal 9); "
                                         "the other ranks were stopped")
    assert first_failed_task("srun: error: n1: tasks 2-3: Exited with exit code 3\n") == (
        2, "n1", "exit code 3")
    assert first_failed_task("no srun errors here\n") is None


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_supervisor_stops_a_rank_that_ignores_sigterm_and_names_the_one_that_failed(
        capsys, monkeypatch, tmp_path):
    """The tf engine's shape: one child per rank.  Rank 1 fails once rank 0 is stuck in
    something that ignores SIGTERM (as a collective with a dead peer does): rank 0 says so with
    a file, rank 1 waits for it, and rank 0 never ends by itself, so nothing races the clock."""
    from harness.runtime import launcher
    monkeypatch.setattr(launcher, "STOP_GRACE_S", 0.5)
    ready = tmp_path / "rank0-stuck"
    stuck = ("import pathlib, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"print('epoch 1/3', flush=True); pathlib.Path({str(ready)!r}).touch(); signal.pause()")
    fails = ("import pathlib, sys, time\n"
             f"while not pathlib.Path({str(ready)!r}).exists(): time.sleep(0.01)\n"
             "print('about to fail', flush=True); sys.exit(3)")
    env = dict(os.environ)
    code = launcher.Supervisor([launcher.Child(_py(stuck), env, 0),
                                launcher.Child(_py(fails), env, 1)]).run(None)
    out, err = capsys.readouterr()
    assert code == 1
    assert "epoch 1/3" in out.splitlines() and "[rank 1] about to fail" in out.splitlines()
    assert re.fullmatch(rf"run failed: rank 1 on {re.escape(socket.gethostname())} failed first "
                        r"\(exit code 3\); the other ranks were stopped within \d+\.\d s\n", err), err


def test_the_supervisor_reads_the_failed_rank_from_horovodruns_report(capsys):
    """horovodrun's shape: one child whose lines carry rank prefixes and whose closing report
    names the rank that failed first."""
    from harness.runtime import launcher
    horovodrun = ("import sys\n"
                  "print('[0]<stdout>:epoch 1/3', flush=True)\n"
                  "print('[1]<stderr>:MemoryError', flush=True)\n"
                  "print('Traceback (most recent call last):')\n"
                  "print('RuntimeError: Horovod detected that one or more processes exited')\n"
                  "print('Process name: 1'); print('Exit code: 137'); sys.exit(1)")
    code = launcher.Supervisor([launcher.Child(_py(horovodrun), dict(os.environ), None)]).run(None)
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == ["epoch 1/3", "[rank 1] MemoryError"]
    assert err.strip() == (f"run failed: rank 1 on {socket.gethostname()} failed first (killed "
                           "by signal 9); the other ranks were stopped")
