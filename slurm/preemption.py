"""Signals: SLURM's warning, and SIGTERM inside a SLURM step, become a clean stop at a batch
boundary on every rank; elsewhere SIGTERM and SIGINT end the run as interrupted (KILLED).

SLURM preempts by sending SIGTERM to every step (SIGKILL after the partition's GraceTime) and,
with ``PreemptMode=REQUEUE``, requeues the job itself; ``scancel`` sends SIGTERM too (SIGKILL
after KillWait).  Either way the last finished epoch must reach the disk before the SIGKILL, so
inside a step SIGTERM is handled as the warning is, and the process then exits with
``EXIT_TERMINATED`` (not ``EXIT_REQUEUE``: SLURM decides about the requeue).

The rendered script asks SLURM for USR2 some time before preemption or the
time limit (``--signal=B:USR2@120``) and passes it on to the job step.  The
handler only sets a flag (no I/O in a signal handler).  Every K batches each
rank asks, with one small allreduce, whether any rank has the flag, so all
ranks stop after the same batch and none is left waiting in a collective.
K keeps the check under 1% of the training time and the reaction under 10 s.
Rank 0 then writes the checkpoint and every process exits with
``EXIT_REQUEUE``, on which the script runs ``scontrol requeue``.

This module is the protocol's one place: the signal (the ``#SBATCH --signal`` directive and the
handler both read ``SIGNAL``), its lead time, the requeue exit code and the batch script's tail
that passes the signal on and requeues.  The Keras side lives in
``harness.runtime.callbacks.PreemptionGuard``.
"""
from __future__ import annotations

import math
import signal
import time

SIGNAL = signal.SIGUSR2  # NCCL may catch USR1; USR2 is what submitit uses for preemption
SIGNAL_NAME = SIGNAL.name.removeprefix("SIG")  # "USR2", as sbatch --signal and kill -s spell it
LEAD_S = 120  # the last batch, a checkpoint write and the metric flush must fit in this
EXIT_REQUEUE = 75  # EX_TEMPFAIL: "try again later"; the batch script requeues on this status
EXIT_TERMINATED = 128 + signal.SIGTERM  # stopped cleanly on SIGTERM: what the shell reports
MAX_REQUEUES_ENV = "HARNESS_MAX_REQUEUES"  # the partition's cap, exported by the batch script
DEFAULT_MAX_REQUEUES = 5

# The batch script's end: SLURM signals the batch shell (B:), which passes the signal on to the
# step and waits until the step has really ended; on EXIT_REQUEUE it requeues the job; a step
# that failed otherwise is reported by REPORT_FAILURE (the rank that died first, srun's word).
REPORT_FAILURE = "@REPORT_FAILURE@"
REQUEUE_TAIL = f"""\
# SLURM warns this shell (B:) before preemption or the time limit: pass it on to the step,
# whose ranks stop after the same batch, checkpoint and exit with {EXIT_REQUEUE}.  Once only: a
# repeated warning (scancel --signal retries) could reach a rank after Python has put the
# signal's default action back on its way out, and kill it before it exits {EXIT_REQUEUE}.
trap 'kill -{SIGNAL_NAME} "$step" 2>/dev/null; trap : {SIGNAL_NAME}' {SIGNAL_NAME}
# Preemption and scancel send SIGTERM to the step's ranks themselves: this shell stays until they
# have checkpointed and ended (its own death would end the job before the grace time is over).
trap ':' TERM
status=""
while [[ -z $status ]]; do  # a trapped signal interrupts wait: wait until the step ends
    if wait "$step"; then status=0; else rc=$?; kill -0 "$step" 2>/dev/null || status=$rc; fi
done
# Requeue after the warning, or after SIGTERM when SLURM preempted the job (PreemptTime is set;
# a job that ends within its GraceTime is otherwise just FAILED); never after scancel.
preempted() {{ scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -q 'PreemptTime=[0-9]'; }}
if [[ $status == {EXIT_REQUEUE} ]] || {{ [[ $status == {EXIT_TERMINATED} ]] && preempted; }}; then
    echo "harness: preempted; checkpoint written; requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
# A failed step (not a clean stop on a signal): the run names the rank that died first, its host
# and how.
case $status in 0|{EXIT_REQUEUE}|{EXIT_TERMINATED}) ;; *) {REPORT_FAILURE} || true ;; esac
exit "$status"
"""


def requeue_tail(report_failure: str) -> str:
    """The tail with the command that reports a failed step (already shell-quoted)."""
    return REQUEUE_TAIL.replace(REPORT_FAILURE, report_failure or ":")


def sbatch_signal() -> str:
    """The ``--signal`` value: warn the batch shell (B:) LEAD_S seconds ahead."""
    return f"B:{SIGNAL_NAME}@{LEAD_S}"

_requested = False
_terminating = False
_signal_name = ""  # which signal asked for the stop, for the closing line and the run
_signal_at = 0.0  # time.monotonic() when it arrived: signal-to-exit is measured from here


class Preempted(Exception):
    """Raised out of ``model.fit`` on every rank at the same batch boundary."""

    def __init__(self, epoch: int, batch: int = 0):
        super().__init__(f"preempted during epoch {epoch + 1}, before its batch {batch}")
        self.epoch = epoch  # zero-based epoch that was interrupted
        self.batch = batch  # zero-based batch of that epoch that was not run
        self.checkpoint_epoch: int | None = None  # epochs completed in the checkpoint left behind


def _note_signal(signum, frame) -> None:
    # No I/O in a handler: remember what came and when; the ranks agree at a batch boundary.
    global _requested, _signal_name, _signal_at
    if not _requested:
        _signal_name, _signal_at = signal.Signals(signum).name, time.monotonic()
    _requested = True


def _terminate(signum, frame) -> None:
    # scancel, horovodrun tearing down, Ctrl-C.  The flag survives when the interrupt lands inside
    # TensorFlow's C++ and comes back out as another exception type.
    global _terminating
    _terminating = True
    raise KeyboardInterrupt(f"signal {signum}")


def install(in_slurm_step: bool) -> None:
    """Catch the warning signal, SIGTERM and SIGINT; call first, before slow imports.

    In a SLURM step SIGTERM means preemption or scancel with a grace period: stop cleanly like
    the warning.  Elsewhere (Ctrl-C, horovodrun tearing down) it interrupts at once.
    """
    signal.signal(SIGNAL, _note_signal)
    signal.signal(signal.SIGTERM, _note_signal if in_slurm_step else _terminate)
    signal.signal(signal.SIGINT, _terminate)


def stopped_by() -> tuple[str, float]:
    """(signal name, seconds since it arrived) of the stop request."""
    return _signal_name, time.monotonic() - _signal_at


def requeue_cap(env=None) -> int:
    """The partition's cap on requeues (exported by the batch script)."""
    import os
    value = (env if env is not None else os.environ).get(MAX_REQUEUES_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_MAX_REQUEUES


def terminating() -> bool:
    """True once SIGTERM or SIGINT arrived, whatever exception it turned into."""
    return _terminating


def requested() -> bool:
    return _requested


def reset() -> None:
    """Forget any signal seen (a process that trains again after a handled stop, and tests)."""
    global _requested, _terminating, _signal_name, _signal_at
    _requested = _terminating = False
    _signal_name, _signal_at = "", 0.0


CHECK_BUDGET = 0.01  # the agreement may cost at most 1% of the training time
MAX_REACTION_S = 10.0  # ...but every rank learns of the signal within ~10 s (the lead is 120 s)


def check_interval(step_s: float, check_s: float) -> int:
    """Batches between agreements: cheap enough, and soon enough after the signal."""
    if step_s <= 0:
        return 1
    cheap = math.ceil(check_s / (CHECK_BUDGET * step_s))
    prompt = max(1, int(MAX_REACTION_S / step_s))
    return max(1, min(cheap, prompt))
