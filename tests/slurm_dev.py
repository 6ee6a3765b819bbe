"""The one-node SLURM of slurm/dev/ for tests: started once, stopped at the end."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import REPO

START, STOP = REPO / "slurm" / "dev" / "start.sh", REPO / "slurm" / "dev" / "stop.sh"


class DevSlurm:
    def __init__(self, state: Path):
        self.state = state
        self.env = {"SLURM_CONF": str(state / "slurm.conf"), "HARNESS_CLUSTER": str(state / "cluster.yaml"),
                    "HARNESS_SLURM_DEV": str(state)}
        self.started_here = False

    def up(self) -> bool:
        """Whether a controller answers; False on a fresh machine where SLURM is not installed
        yet (start.sh installs it), rather than FileNotFoundError."""
        if shutil.which("scontrol") is None:
            return False
        done = subprocess.run(["scontrol", "ping"], env=dict(os.environ, **self.env),
                              capture_output=True, text=True)
        return "UP" in done.stdout

    def start(self) -> "DevSlurm":
        """Reuse a dev SLURM that is already up (a developer's); else start one and own it."""
        if not self.up():
            subprocess.run(["bash", str(START)], env=dict(os.environ, **self.env), check=True,
                           capture_output=True, text=True, timeout=600)
            self.started_here = True
        return self

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(["bash", str(STOP)], env=dict(os.environ, **self.env), timeout=120)

    def cmd(self, *args) -> str:
        return subprocess.run(list(args), env=dict(os.environ, **self.env), capture_output=True,
                              text=True, timeout=60).stdout

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as {key: value} ({} once SLURM has forgotten the job)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.cmd("scontrol", "show", "job", job_id)))

    def queue(self) -> list[str]:
        return self.cmd("squeue", "-h", "-o", "%i").split()

    def wait_state(self, job_id: str, states: set, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise AssertionError(f"job {job_id} not in {states} after {timeout_s:.0f} s: {self.job(job_id)}")
