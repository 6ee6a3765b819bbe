"""Signals: SLURM's warning becomes a clean stop at a batch boundary on every rank; SIGTERM and
SIGINT end the run as interrupted (KILLED).

The rendered script asks SLURM for USR2 some time before preemption or the
time limit (``--signal=B:USR2@120``) and passes it on to the job step.  The
handler only sets a flag (no I/O in a signal handler).  Every K batches each
rank asks, with one small allreduce, whether any rank has the flag, so all
ranks stop after the same batch and none is left waiting in a collective.
K keeps the check under 1% of the training time and the reaction under 10 s.
Rank 0 then writes the checkpoint and every process exits with
``EXIT_REQUEUE``, on which the script runs ``scontrol requeue``.
"""
from __future__ import annotations

import math
import signal
import time

import numpy as np

SIGNAL = signal.SIGUSR2
EXIT_REQUEUE = 75  # EX_TEMPFAIL: "try again later"; the batch script requeues on this status

_requested = False
_terminating = False


class Preempted(Exception):
    """Raised out of ``model.fit`` on every rank at the same batch boundary."""

    def __init__(self, epoch: int):
        super().__init__(f"preempted during epoch {epoch + 1}")
        self.epoch = epoch  # zero-based epoch that was interrupted
        self.checkpoint_epoch: int | None = None  # epochs completed in the checkpoint left behind


def _note_signal(signum, frame) -> None:
    global _requested
    _requested = True


def _terminate(signum, frame) -> None:
    # scancel, horovodrun tearing down, Ctrl-C.  The flag survives when the interrupt lands inside
    # TensorFlow's C++ and comes back out as another exception type.
    global _terminating
    _terminating = True
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """Catch the warning signal, SIGTERM and SIGINT; call first, before slow imports."""
    signal.signal(SIGNAL, _note_signal)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)


def terminating() -> bool:
    """True once SIGTERM or SIGINT arrived, whatever exception it turned into."""
    return _terminating


def requested() -> bool:
    return _requested


def reset() -> None:
    global _requested
    _requested = False
_terminating = False


CHECK_BUDGET = 0.01  # the agreement may cost at most 1% of the training time
MAX_REACTION_S = 10.0  # ...but every rank learns of the signal within ~10 s (the lead is 120 s)


def check_interval(step_s: float, check_s: float) -> int:
    """Batches between agreements: cheap enough, and soon enough after the signal."""
    if step_s <= 0:
        return 1
    cheap = math.ceil(check_s / (CHECK_BUDGET * step_s))
    prompt = max(1, int(MAX_REACTION_S / step_s))
    return max(1, min(cheap, prompt))


def make_guard():
    """A Keras callback (built lazily: this module must import without TensorFlow)."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    class PreemptionGuard(tf.keras.callbacks.Callback):
        """Every K batches, all ranks ask: did any rank get the signal?  Then all stop there.

        One allreduce (max) carries the flag and the timings that set the next K, so
        every rank computes the same K and checks after the same batch.
        """

        def __init__(self):
            super().__init__()
            self.epoch, self.batches, self.next_check, self.last_checked = 0, 0, 1, 0
            self.since = time.perf_counter()
            self.check_s = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches < self.next_check:
                return
            now = time.perf_counter()
            step_s = (now - self.since) / max(1, self.batches - self.last_checked)
            mine = np.array([float(requested()), step_s, self.check_s], dtype=np.float64)
            agreed = hvd.allreduce(tf.constant(mine), op=hvd.Max, name="harness.preemption").numpy()
            self.check_s = time.perf_counter() - now
            if agreed[0] > 0:
                raise Preempted(self.epoch)
            self.last_checked, self.since = self.batches, time.perf_counter()
            self.next_check = self.batches + check_interval(agreed[1], agreed[2])

    return PreemptionGuard()
