"""Signals: SLURM's warning becomes a clean stop at a batch boundary on every rank; SIGTERM and
SIGINT end the run as interrupted (KILLED).

The rendered script asks SLURM for USR2 some time before preemption or the
time limit (``--signal=B:USR2@120``) and passes it on to the job step.  The
handler only sets a flag (no I/O in a signal handler).  At each batch end
every rank asks, with one scalar allreduce, whether any rank has the flag, so
all ranks stop after the same batch and none is left waiting in a collective.
Rank 0 then writes the checkpoint and every process exits with
``EXIT_REQUEUE``, on which the script runs ``scontrol requeue``.
"""
from __future__ import annotations

import signal

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


def make_guard():
    """A Keras callback (built lazily: this module must import without TensorFlow)."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    class PreemptionGuard(tf.keras.callbacks.Callback):
        """Every rank, every batch: did any rank get the signal?  Then all stop here."""

        def __init__(self):
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            flag = tf.constant(np.int32(requested()))
            if int(hvd.allreduce(flag, op=hvd.Sum, name="harness.preemption")) > 0:
                raise Preempted(self.epoch)

    return PreemptionGuard()
