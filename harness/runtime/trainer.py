"""The data-parallel training of one job in one process (every rank runs this).

Reads like Horovod's Keras example: data shard, model, distributed optimizer,
callbacks, fit.  What differs between engines (Horovod, TensorFlow's
multi-worker strategy) is behind ``ctx.engine``.  Rank-specific work
(printing, checkpoints, tracking) sits in callbacks that only rank 0 gets, so
the code here never branches on rank except to choose them.
"""
from __future__ import annotations

import inspect
import os
import shutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Optional

import numpy as np
import tensorflow as tf

from harness.runtime import callbacks as cb
from harness.runtime import checkpoint, hardware, overfitting, profiling, step_anatomy
from slurm import preemption
from harness.runtime import inputs
from harness.runtime.distributed import ProcessContext, trainable_fingerprints
from harness.errors import RunFailed, UserError
from harness.runtime.lr import scaled_rate
from harness.spec.schema import MIXED_PRECISION_MIN_CC, JobSpec

@dataclass
class Outcome:
    """What a finished training hands back to the worker."""

    history: list
    start_epoch: int
    final: dict = field(default_factory=dict)  # the job's held-out figures
    stopped_early_at: Optional[int] = None
    restored_val_loss: Optional[float] = None  # val_loss of the restored best weights, measured
    model: object = None
    epoch_ends: list = field(default_factory=list)  # wall-clock time of each epoch's end


def compile_model(job: ModuleType, spec: JobSpec, ctx: ProcessContext) -> tuple[tf.keras.Model, float]:
    t = spec.training
    if t.mixed_precision:
        check_mixed_precision_pays(hardware.gpu_name(), hardware.compute_capability())
        tf.keras.mixed_precision.set_global_policy("mixed_float16")  # before the layers exist
    target = scaled_rate(t.learning_rate, t.lr_scaling, ctx.size)
    with ctx.engine.scope():  # the tf engine mirrors every variable created in here
        model = job.build_model(spec.data)
        optimizer = ctx.engine.optimizer(t.optimizer, target, t.fp16_allreduce,
                                         spec.communication.backward_passes_per_step)
        # steps_per_execution: K steps per call from the host (one dispatch, one callback round);
        # jit_compile: the step compiled by XLA.  Each engine knows how it can do both.
        ctx.engine.compile(model, optimizer, job.LOSS, list(getattr(job, "METRICS", ())),
                           t.steps_per_execution, t.jit_compile)
    return model, target


def check_mixed_precision_pays(gpu: str, capability: Optional[tuple]) -> None:
    """On a GPU without tensor cores (Pascal: compute capability 6.x) float16 runs at a fraction
    of float32's speed: refused, as ``harness submit`` refuses it for a Pascal partition."""
    if capability is not None and tuple(capability) < MIXED_PRECISION_MIN_CC:
        raise UserError(f"training.mixed_precision=true: this node's GPU ({gpu}, compute "
                        f"capability {capability[0]}.{capability[1]}) has no tensor cores and runs "
                        "float16 at a fraction of float32's speed; use false on it")


def train(spec: JobSpec, job: ModuleType, ctx: ProcessContext, tracker,
          resume_state: Optional[checkpoint.CheckpointState]) -> Outcome:
    start = resume_state.epoch if resume_state is not None else 0
    with inputs.for_job(job, spec, ctx, start) as data:  # staged copies live as long as this
        return train_on(data, spec, job, ctx, tracker, resume_state)


def train_on(data: inputs.Inputs, spec: JobSpec, job: ModuleType, ctx: ProcessContext, tracker,
             resume_state: Optional[checkpoint.CheckpointState]) -> Outcome:
    start = resume_state.epoch if resume_state is not None else 0
    if resume_state is None:  # what the run trained on: name, digest, shape (rank 0 records it)
        data.describe(tracker, spec)
    model, target_lr = compile_model(job, spec, ctx)
    data.check_fits(model, spec)
    engine = ctx.engine
    history, best_weights = [], None
    # Every variable (optimizer slots too) exists before training: a checkpoint taken before
    # the first step holds them all, and a restore has somewhere to put them.
    engine.prepare(model, *data.element_specs)
    if resume_state is not None:
        # Every rank reads the checkpoint (it lives on a shared filesystem), so all start equal.
        state = checkpoint.restore(spec.checkpoint_dir, model, model.optimizer, engine)
        history, start, best_weights = list(state.history), state.epoch, state.best_weights
    # Every rank starts from rank 0's values (matters after a resume from one rank's files):
    # once, here, rather than in a batch hook that would sync the host on every step.
    engine.start_equal(model)
    t = spec.training
    watch = cb.OverfitWatch(history, t.patience, t.min_delta, t.early_stopping, best_weights)
    callbacks = callbacks_for(spec, ctx, tracker, watch, data.steps, data.per_step, target_lr,
                              resumed=resume_state is not None, start=start, wait=data.wait,
                              figures=validation_figures(job, data, ctx.engine),
                              anatomy=step_anatomy.for_run(job, data, t))
    validation = engine.distribute(data.validation)
    if start < t.epochs and not already_stopped(watch, model):
        try:
            with data.reading():  # a record that fails to decode names its file
                model.fit(engine.distribute(data.train, training=True),
                          validation_data=validation, epochs=t.epochs, initial_epoch=start,
                          callbacks=callbacks, verbose=0, shuffle=False,  # ranks shuffle their own
                          **{**engine.fit_options(data.steps), **data.fit_options})
        except preemption.Preempted as stop:
            stop.checkpoint_epoch = leave_checkpoint(callbacks, ctx)
            raise
    restored = restored_val_loss(model, validation, engine) if watch.stopped_at is not None else None
    check_ranks_agree(model, ctx)
    final = {}
    if ctx.is_chief and hasattr(job, "evaluate"):
        final = evaluate(job, engine.chief_model(model, job), data.held_out(), spec, tracker)
    clock = next(c for c in callbacks if isinstance(c, cb.EpochClock))
    return Outcome(history=history, start_epoch=start, final=final,
                   stopped_early_at=watch.stopped_at, restored_val_loss=restored, model=model,
                   epoch_ends=clock.epoch_ends)


def validation_figures(job: ModuleType, data: inputs.Inputs,
                       engine) -> Optional[cb.ValidationFigures]:
    if not hasattr(job, "validation_figures"):
        return None
    return cb.ValidationFigures(job.validation_figures, data.validation, engine)


def evaluate(job: ModuleType, model, held_out, spec: JobSpec, tracker) -> dict:
    """The job's held-out figures; a job whose ``evaluate`` takes a folder writes its tables
    and plots there (beside the checkpoints), and they go to the run under ``evaluation/``."""
    if len(inspect.signature(job.evaluate).parameters) < 3:
        return job.evaluate(model, held_out)
    folder = spec.checkpoint_dir.parent / "evaluation"
    shutil.rmtree(folder, ignore_errors=True)  # no table from an earlier run passes for this one's
    folder.mkdir(parents=True)
    final = job.evaluate(model, held_out, folder)
    for path in sorted(folder.iterdir()):
        tracker.log_artifact(path, "evaluation")
    return final


def already_stopped(watch: cb.OverfitWatch, model: tf.keras.Model) -> bool:
    """A resumed run whose history already met the stopping rule ends there, best weights back."""
    if not (watch.early_stopping and watch.history and
            overfitting.should_stop(watch.history, watch.patience, watch.min_delta)):
        return False
    watch.stopped_at = len(watch.history) - 1
    if watch.best_weights is not None:
        model.set_weights(watch.best_weights)
    return True


def restored_val_loss(model: tf.keras.Model, validation, engine) -> float:
    """val_loss of the weights early stopping restored, averaged over ranks as in fit."""
    return engine.allreduce_mean(model.evaluate(validation, verbose=0, return_dict=True)["loss"])


def check_ranks_agree(model: tf.keras.Model, ctx: ProcessContext) -> None:
    prints = trainable_fingerprints(model, ctx.engine)
    if len(set(prints)) != 1:
        raise RunFailed(f"trainable weights differ across ranks after training ({prints}); "
                        "a rank missed a broadcast or allreduce")
    if ctx.is_chief:
        print(f"weights identical on all {ctx.size} ranks (sha1 {prints[0][:12]})", flush=True)


def leave_checkpoint(callbacks: list, ctx: ProcessContext) -> int:
    """Rank 0 puts the last finished epoch on disk; no rank leaves before it is there."""
    saver = next((c for c in callbacks if isinstance(c, cb.Checkpointer)), None)
    epoch = saver.save_boundary() if saver is not None else None
    return ctx.engine.broadcast_object(epoch, root=0)


def callbacks_for(spec: JobSpec, ctx: ProcessContext, tracker, watch: cb.OverfitWatch,
                  steps: int, samples_per_step: np.ndarray, target_lr: float,
                  resumed: bool = False, start: int = 0, wait=None, figures=None,
                  anatomy=None) -> list:
    t = spec.training
    preemptible = ctx.slurm.in_step  # SLURM may send the warning signal; locally nobody does
    chain = [
        # Metrics averaged over ranks so every later callback decides the same on every rank.
        *ctx.engine.sync_callbacks(),
        cb.ScheduledRate(t.learning_rate, target_lr, t.warmup_epochs, steps, ctx.engine,
                         t.lr_decay, t.epochs),
        cb.EpochClock(samples_per_step, ctx.size),
        *([cb.InputWaitClock(wait, ctx.engine)] if wait is not None else []),
        *([anatomy] if anatomy is not None else []),  # reads the two clocks' figures
        # Before the watch, so the figures are in the history, the progress line and MLflow.
        *([figures] if figures is not None else []),
        watch,
    ]
    guard = cb.PreemptionGuard(ctx.engine) if preemptible else None
    if guard is not None:
        # After the metric averaging: a stop between batches never splits an allreduce.
        chain.append(guard)
    if ctx.is_chief:
        chain.append(cb.Reporter(tracker, t.epochs))
        if spec.tracking.batch_metrics_every:
            chain.append(cb.BatchLossReporter(tracker, steps, spec.tracking.batch_metrics_every))
        chain.append(cb.Checkpointer(
            ctx.engine, spec.checkpoint_dir, spec.checkpoint.every_epochs, t.epochs,
            lambda done: checkpoint.CheckpointState(
                epoch=done, history=watch.history[:done], run_id=tracker.run_id,
                signature=checkpoint.model_signature(watch.model),
                best_weights=watch.best_weights),
            saved_epoch=start if resumed else None, start_epoch=start, preemptible=preemptible))
    if t.profiled_steps is not None:
        chain.append(profiling.ProfileSteps(*t.profiled_steps, steps, t.steps_per_execution,
                                            spec.checkpoint_dir.parent / "profile", ctx.is_chief,
                                            ctx.engine, tracker if ctx.is_chief else None))
    # Tests: a point they control.
    hold = cb.HoldPoint.from_env(os.environ, guard, ctx.is_chief, steps, resumed)
    if hold is not None:
        chain.append(hold)
    return chain
