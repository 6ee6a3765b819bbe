"""Keras callbacks that make up the harness's per-step and per-epoch work.

Order matters and is fixed by ``trainer.callbacks_for``: the engine's metric
averaging first, so every later callback sees the same averaged numbers on every
rank and takes the same decisions (stop, checkpoint).

No step waits for the host.  Keras turns a step's logs into Python numbers, which waits for
the step to finish, whenever a batch hook might read them: on Keras 2 unless every callback
with batch hooks declares ``_supports_tf_logs``, on Keras 3 whenever any callback implements
``on_train_batch_end``.  So the harness's per-step work (rate schedule, clock, input wait,
preemption check) sits in ``on_train_batch_begin``, reads no logs, and says so (``HostFree``):
the host dispatches step k+1 while the device still runs step k.  Only the opt-in batch-loss
log (``tracking.batch_metrics_every``) reads a step's loss, and then only on its steps.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from harness.runtime import checkpoint
from harness.runtime import overfitting
from harness.runtime.lr import rate_at
from harness.runtime.throughput import Throughput
from slurm import preemption


class HostFree(tf.keras.callbacks.Callback):
    """A callback that never reads a step's logs in its batch hooks: Keras may hand them over as
    tensors, without waiting for the step (Keras 2 reads ``_supports_tf_logs``, which its
    ``Callback.__init__`` sets to False on the instance)."""

    def __init__(self):
        super().__init__()
        self._supports_tf_logs = True


class ScheduledRate(HostFree):
    """Sets the optimizer's rate before each step: warm-up ramp, then the scaled rate (held,
    or decayed to zero over ``epochs`` with ``decay`` cosine).

    With ``training.steps_per_execution`` K, Keras calls the batch hooks once per K steps (batch
    = the first step of the call): the rate is set for that step and holds for the K steps of
    the call, so the ramp climbs in stairs of K steps and reaches the target at the same step.
    """

    def __init__(self, base: float, target: float, warmup_epochs: float, steps: int, engine,
                 decay: str = "none", epochs: int = 0):
        super().__init__()
        self.base, self.target, self.warmup, self.steps = base, target, warmup_epochs, steps
        self.decay, self.epochs = decay, epochs
        self.engine = engine
        self.epoch = 0
        self.current = target

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        rate = rate_at(self.epoch + batch / self.steps, self.base, self.target, self.warmup,
                       self.decay, self.epochs)
        if rate != self.current or batch == 0:
            self.engine.set_learning_rate(self.model.optimizer, rate)
            self.current = rate

    def on_epoch_end(self, epoch, logs=None):
        logs["lr"] = float(self.current)


class EpochClock(HostFree):
    """Epoch wall time and training throughput over all processes, first step excluded.

    Read at the start of each step call (step ``batch`` begins once the previous ones are
    dispatched) and when training ends for the epoch (Keras waits for the last step before
    validating), so the validation pass is not counted as training time.
    """

    def __init__(self, global_batches: np.ndarray, processes: int):
        super().__init__()
        self.cumulative = np.cumsum(global_batches)
        self.processes = processes
        self.first_epoch = True
        self.epoch_ends: list[float] = []  # wall-clock times, to mark epochs on telemetry plots

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.trained = False
        # In the first epoch the first step traces and compiles the graph: leave it out.
        self.meter = Throughput(warmup_steps=2 if self.first_epoch else 1, processes=self.processes)
        self.meter.update(self.started, 0)
        self.first_epoch = False

    def on_train_batch_begin(self, batch, logs=None):
        if batch > 0:  # steps 0..batch-1 are done
            self.meter.update(time.perf_counter(), int(self.cumulative[batch - 1]))

    def on_test_begin(self, logs=None):  # fit's validation pass: the epoch's training is over
        self._training_done()

    def on_epoch_end(self, epoch, logs=None):
        self._training_done()
        logs["time/epoch_s"] = time.perf_counter() - self.started
        logs["time/train_s"] = self.train_s
        logs.update(self.meter.compute())
        self.epoch_ends.append(time.time())

    def _training_done(self) -> None:
        if not self.trained:
            now = time.perf_counter()
            self.meter.update(now, int(self.cumulative[-1]))
            self.train_s, self.trained = now - self.started, True


INPUT_BOUND = 0.10  # the share of step time waiting for input above which the epoch line says so
INPUT_BOUND_MIN_S = 1.0  # ... when the epoch waited at least this long in all


class InputWaitClock(HostFree):
    """``time/data_wait_fraction``: the share of the epoch's training time the steps spent
    waiting for their batch, the largest over the ranks (every rank calls this, so the maximum
    is a collective)."""

    def __init__(self, wait, engine):
        super().__init__()
        self.wait, self.engine = wait, engine
        self.first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        self.began, self.started, self.ended = [], time.perf_counter(), None
        self.wait.delivered.clear()

    def on_test_begin(self, logs=None):  # fit's validation pass: the epoch's training is over
        self.ended = self.ended or time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.began.append((batch, time.perf_counter()))

    def on_epoch_end(self, epoch, logs=None):
        # A call of K steps (steps_per_execution) is seen from the host when it begins: its first
        # batch's wait is measured, the K-1 fetched inside the call are not.
        delivered = self.wait.delivered
        pairs = [(began, delivered[batch]) for batch, began in self.began if batch < len(delivered)]
        if self.first_epoch:  # the first step traces the graph: not waiting for data
            pairs, self.first_epoch = pairs[1:], False
        waited = sum(max(0.0, delivered - began) for began, delivered in pairs)
        fraction = waited / max((self.ended or time.perf_counter()) - self.started, 1e-9)
        logs["time/data_wait_fraction"] = float(self.engine.agree_max(np.array([fraction]))[0])


class ValidationFigures(tf.keras.callbacks.Callback):
    """The job's ``validation_figures`` of the whole validation set, as ``val_<name>`` each epoch.

    Each rank scores its own share of the validation set; the scores are gathered, so every
    rank computes the same figures from the same whole set (ranking figures such as AUROC
    cannot be averaged over ranks' shares).  Scored with the model called directly, not
    ``predict``: no collective a strategy would run, on either engine.
    """

    def __init__(self, figures: Callable, validation: tf.data.Dataset, engine):
        super().__init__()
        self.figures, self.validation, self.engine = figures, validation, engine

    def on_epoch_end(self, epoch, logs=None):
        labels, scores = [], []
        for x, y in self.validation:
            scores.append(np.asarray(self.model(x, training=False)).ravel())
            labels.append(np.asarray(y).ravel())
        mine = (np.concatenate(labels or [np.zeros(0)]), np.concatenate(scores or [np.zeros(0)]))
        gathered = self.engine.allgather_object(mine)
        every = [np.concatenate([g[i] for g in gathered]) for i in (0, 1)]
        for name, value in self.figures(*every).items():
            logs[f"val_{name}"] = float(value)


class OverfitWatch(tf.keras.callbacks.Callback):
    """Keeps the epoch history and the best weights, and stops early as Keras' EarlyStopping does.

    Every rank decides alike: the metrics it reads are already averaged over the ranks.  The best
    weights live in the checkpoint too, so a resumed run restores the same ones.
    """

    def __init__(self, history: list, patience: int, min_delta: float, early_stopping: bool,
                 best_weights: Optional[list] = None):
        super().__init__()
        self.history, self.patience, self.min_delta = history, patience, min_delta
        self.early_stopping, self.best_weights = early_stopping, best_weights
        self.stopped_at: Optional[int] = None

    def on_epoch_end(self, epoch, logs=None):
        if "val_loss" in logs:
            logs["generalization_gap"] = logs["val_loss"] - logs["loss"]
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        if overfitting.best_epoch(self.history, self.min_delta) == len(self.history) - 1:
            self.best_weights = self.model.get_weights()
        if self.early_stopping and overfitting.should_stop(self.history, self.patience,
                                                           self.min_delta):
            self.stopped_at = epoch
            self.model.stop_training = True

    @property
    def best_index(self) -> Optional[int]:
        return overfitting.best_epoch(self.history, self.min_delta)

    def on_train_end(self, logs=None):
        if self.stopped_at is not None and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def format_epoch(epoch: int, total: int, logs: dict) -> str:
    """One readable progress line."""
    parts = [f"epoch {epoch + 1:>{len(str(total))}}/{total}"]
    for key in ("loss", "val_loss"):
        if key in logs:
            parts.append(f"{key} {logs[key]:.4f}")
    for key, value in sorted(logs.items()):
        if key in ("loss", "val_loss", "lr", "generalization_gap") or "/" in key:
            continue
        parts.append(f"{key} {value:.4f}")
    parts.append(f"lr {logs.get('lr', float('nan')):.2e}")
    parts.append(f"{logs.get('time/epoch_s', 0.0):.1f}s")
    if "throughput/samples_per_sec" in logs:
        parts.append(f"{logs['throughput/samples_per_sec']:.0f} samples/s")
    waited = logs.get("time/data_wait_fraction", 0.0)
    # Said when it costs time worth saving: a 0.2 s epoch of the diabetes CSV is not starving.
    if waited > INPUT_BOUND and waited * logs.get("time/epoch_s", 0.0) >= INPUT_BOUND_MIN_S:
        parts.append(f"input-bound: {waited:.0%} of the epoch waiting for data (try a shard "
                     "folder from `harness data pack` for parallel reads, more CPU cores per "
                     "rank for the readers, or the shards on the node's local disk)")
    return "  ".join(parts)


class Reporter(tf.keras.callbacks.Callback):
    """Rank 0: one line per epoch on stdout and the epoch's metrics to the tracker."""

    def __init__(self, tracker, total_epochs: int, out=sys.stdout):
        super().__init__()
        self.tracker, self.total, self.out = tracker, total_epochs, out

    def on_epoch_end(self, epoch, logs=None):
        print(format_epoch(epoch, self.total, logs), file=self.out, flush=True)
        self.tracker.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


class BatchLossReporter(HostFree):
    """Rank 0, opt-in (``tracking.batch_metrics_every``): its own running loss every N steps
    (not averaged over ranks: that would cost an allreduce per step).  Only the steps it logs
    wait for the device on Keras 2; on Keras 3 any ``on_train_batch_end`` makes Keras convert
    every step's logs, so this is the one callback that costs a sync per step there."""

    def __init__(self, tracker, steps: int, every: int):
        super().__init__()
        self.tracker, self.steps, self.every = tracker, steps, every
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == 0 and logs and "loss" in logs:
            self.tracker.log_metrics({"batch/loss_rank0": float(logs["loss"])},
                                     step=self.epoch * self.steps + batch)


class Checkpointer(tf.keras.callbacks.Callback):
    """Rank 0: atomic checkpoint every N epochs and after the last one.

    A preemptible job (under SLURM) also keeps the variables of the last epoch
    boundary in host memory when that epoch was not written, so a preemption
    between two checkpoints can still leave the last finished epoch on disk.
    """

    def __init__(self, engine, directory: Path, every: int, total: int, make_state: Callable,
                 saved_epoch: Optional[int], start_epoch: int, preemptible: bool):
        super().__init__()
        self.engine = engine
        self.directory, self.every, self.total, self.make_state = directory, every, total, make_state
        self.saved_epoch, self.start, self.preemptible = saved_epoch, start_epoch, preemptible
        self.boundary: Optional[tuple] = None  # (epochs done, variable values) not yet on disk

    def on_train_begin(self, logs=None):
        if self.preemptible and self.saved_epoch != self.start:
            self._remember_boundary(self.start)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self.total or self.model.stop_training:
            self._save(done)
        elif self.preemptible:
            self._remember_boundary(done)

    def save_boundary(self) -> int:
        """After a preemption: make sure the last finished epoch is on disk; its epoch count."""
        if self.boundary is not None:
            done, values = self.boundary
            for variable, value in zip(self._variables(), values):
                variable.assign(value)
            self._save(done)
        return self.saved_epoch

    def _save(self, done: int) -> None:
        checkpoint.save(self.directory, self.model, self.model.optimizer, self.make_state(done),
                        engine=self.engine)
        self.saved_epoch, self.boundary = done, None

    def _remember_boundary(self, done: int) -> None:
        self.boundary = (done, [v.numpy() for v in self._variables()])

    def _variables(self) -> list:
        return list(self.model.weights) + self.engine.optimizer_variables(self.model.optimizer)


class PreemptionGuard(HostFree):
    """Every K step calls, all ranks ask: did any rank get the signal?  Then all stop there.

    One allreduce (max) carries the flag and the timings that set the next K, so
    every rank computes the same K and checks before the same batch.  The check runs as a
    step call begins, so with ``steps_per_execution`` > 1 it falls between two calls, never
    inside one; the batch it stops before is in ``stopped_before`` (and in the closing line).
    """

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self.epoch, self.calls, self.next_check, self.last_checked = 0, 0, 1, 0
        self.since = time.perf_counter()
        self.check_s = 0.0
        self.stopped_before: Optional[tuple[int, int]] = None  # (epoch, batch), zero-based

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def check_at_next_batch(self) -> None:
        """Agree before the next step call whatever the interval (after a hold, a signal is
        likely)."""
        self.next_check = self.calls

    def on_train_batch_begin(self, batch, logs=None):
        # Every step call before this one has finished on this rank when the allreduce returns.
        if self.calls >= self.next_check:
            self._agree(batch)
        self.calls += 1

    def _agree(self, batch: int) -> None:
        now = time.perf_counter()
        step_s = (now - self.since) / max(1, self.calls - self.last_checked)
        mine = np.array([float(preemption.requested()), step_s, self.check_s], dtype=np.float64)
        agreed = self.engine.agree_max(mine)
        self.check_s = time.perf_counter() - now
        if agreed[0] > 0:
            self.stopped_before = (self.epoch, batch)
            raise preemption.Preempted(self.epoch, batch)
        self.last_checked, self.since = self.calls, time.perf_counter()
        self.next_check = self.calls + preemption.check_interval(agreed[1], agreed[2])


HOLD_AFTER_EPOCH_ENV = "HARNESS_HOLD_AFTER_EPOCH"
HOLD_AT_STEP_ENV = "HARNESS_HOLD_AT_STEP"
HOLD_RELEASE_ENV = "HARNESS_HOLD_RELEASE"
HOLD_MAX_S = 600.0


class HoldPoint(HostFree):
    """Holds every rank after epoch K (``HARNESS_HOLD_AFTER_EPOCH``; several: ``5,20``), or as the
    step call holding step S begins (``HARNESS_HOLD_AT_STEP``, steps counted from 1 over the
    run), until a stop signal arrives or the file ``HARNESS_HOLD_RELEASE`` says so: a test that
    preempts, cancels or cuts the tracking server acts at a point it controls instead of racing
    the job to its end.  An empty release file releases every hold; one holding a number releases
    the epoch holds up to that epoch.  The line "hold: after epoch K" (or "hold: at step S") says
    the job is there.  Runs last; the guard then agrees before the very next step call, so the
    stop lands at the start of epoch K+1, or after the held call, on every rank.
    """

    def __init__(self, epochs, release: str, guard: Optional[PreemptionGuard], chief: bool,
                 steps=(), steps_per_epoch: int = 0):
        super().__init__()
        self.epochs = {epochs} if isinstance(epochs, int) else set(epochs)
        self.release, self.guard, self.chief = release, guard, chief
        self.steps, self.steps_per_epoch, self.epoch = set(steps), steps_per_epoch, 0

    @classmethod
    def from_env(cls, env, guard, chief: bool, steps_per_epoch: int = 0,
                 resumed: bool = False) -> Optional["HoldPoint"]:
        def numbers(name):
            return [int(v) for v in env.get(name, "").split(",") if v.strip().isdigit()]
        # A resumed attempt starts in the epoch that was stopped: it would meet a step hold
        # again, so only the first attempt holds at steps.
        epochs, steps = numbers(HOLD_AFTER_EPOCH_ENV), [] if resumed else numbers(HOLD_AT_STEP_ENV)
        if not (epochs or steps):
            return None
        return cls(epochs, env.get(HOLD_RELEASE_ENV, ""), guard, chief, steps, steps_per_epoch)

    def released(self, epoch: int) -> bool:
        try:
            text = Path(self.release).read_text().strip() if self.release else None
        except OSError:
            return False
        return text is not None and (not text.isdigit() or int(text) >= epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch + 1
        held = sorted(s for s in self.steps if s <= step)
        if held:  # the call that holds step S begins here (or S falls inside it)
            self.steps -= set(held)
            self._hold(f"at step {held[0]}", self.epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            self._hold(f"after epoch {epoch + 1}", epoch + 1)

    def _hold(self, where: str, epoch: int) -> None:
        if self.chief:
            print(f"hold: {where}, until a signal"
                  + (f" or {self.release}" if self.release else ""), flush=True)
        deadline = time.monotonic() + HOLD_MAX_S
        while not (preemption.requested() or time.monotonic() > deadline
                   or self.released(epoch)):
            time.sleep(0.05)
        if self.guard is not None:
            self.guard.check_at_next_batch()
