"""What `harness status`, the scaling run and the sweep summary read from SLURM's commands, on
output recorded from the dev cluster (SLURM 22.05, accounting off) and from a site with
accounting: no root, no daemons."""
from __future__ import annotations

from slurm import status

# squeue --me -h -o "%i|%j|%T|%M|%r|%k"   (recorded on the dev cluster during tests/test_slurm.py)
SQUEUE = """\
16|diabetes_mlp|PENDING|0:00|BeginTime|lars-harness
17|wrap|RUNNING|0:00|None|(null)
18_[2-3%2]|diabetes_mlp|PENDING|0:00|JobArrayTaskLimit|lars-harness
"""

# scontrol show job 12   (the same machine, a finished job: accounting is off, MinJobAge keeps it)
SCONTROL = """\
JobId=12 JobName=synthetic
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   JobState=COMPLETED Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0
   PreemptEligibleTime=2026-11-29T03:20:08 PreemptTime=None
   Comment=lars-harness 
   StdErr=/tmp/w/runs/synthetic/slurm/synthetic-12.err
"""

# sacct -n -P -X -j 40,41,42 -o JobID,State   (a site with accounting)
SACCT = "40|COMPLETED\n41|CANCELLED by 0\n42|OUT_OF_MEMORY\n"

# An array: squeue -h -r -j 50 -o "%i|%T", sacct, and scontrol's one record per started task.
ARRAY_SQUEUE = "50_2|RUNNING\n50_3|PENDING\n"
ARRAY_SACCT = "50_0|COMPLETED\n50_1|FAILED\n50_[2-3%2]|PENDING\n51_0|COMPLETED\n"
ARRAY_SCONTROL = """\
JobId=52 ArrayJobId=50 ArrayTaskId=1 JobName=diabetes_mlp
   JobState=FAILED Reason=NonZeroExitCode Dependency=(null)

JobId=50 ArrayJobId=50 ArrayTaskId=0 JobName=diabetes_mlp
   JobState=COMPLETED Reason=None Dependency=(null)

JobId=53 ArrayJobId=50 ArrayTaskId=2-3%2 JobName=diabetes_mlp
   JobState=PENDING Reason=JobArrayTaskLimit
"""


def test_squeue_keeps_the_harness_jobs_only():
    jobs = status.parse_queue(SQUEUE)
    assert sorted(jobs) == ["16", "18_[2-3%2]"]  # job 17 is someone's --wrap, not ours
    assert jobs["16"] == {"state": "PENDING", "name": "diabetes_mlp", "elapsed": "0:00",
                          "reason": "BeginTime"}


def test_a_finished_jobs_state_from_sacct_else_scontrol():
    assert status.parse_sacct_states(SACCT, ["40", "41", "42", "43"]) == {
        "40": "COMPLETED", "41": "CANCELLED", "42": "OUT_OF_MEMORY"}  # 43: not in sacct
    assert status.parse_scontrol_state(SCONTROL) == "COMPLETED"
    assert status.parse_scontrol_state("slurm_load_jobs error: Invalid job id specified\n") == \
        status.FORGOTTEN


def test_an_arrays_tasks_from_squeue_sacct_and_scontrol():
    assert status.parse_array_queue(ARRAY_SQUEUE) == {2: "RUNNING", 3: "PENDING"}
    assert status.parse_array_sacct(ARRAY_SACCT, "50") == {0: "COMPLETED", 1: "FAILED"}
    assert status.parse_array_scontrol(ARRAY_SCONTROL, "50") == {1: "FAILED", 0: "COMPLETED"}
