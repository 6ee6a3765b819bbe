"""SLURM cross-check and the launcher's reading of horovodrun's output."""
from __future__ import annotations

import io
import socket

import pytest

from harness.errors import RunFailed
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
    with pytest.raises(RunFailed, match=r"hvd.size\(\)=1 but SLURM_NTASKS=4.*HINT"):
        SlurmEnvironment.from_env(STEP).cross_check(size=1, local_rank=0)
    with pytest.raises(RunFailed, match="SLURM_LOCALID=1"):
        SlurmEnvironment.from_env(STEP).cross_check(size=4, local_rank=0)
    assert SlurmEnvironment.from_env(STEP).cross_check(size=4, local_rank=1) is None  # agrees
    outside = SlurmEnvironment.from_env({})
    assert not outside.in_step and outside.cross_check(size=1, local_rank=0) is None


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
