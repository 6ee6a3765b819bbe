"""One training process from start to end: init, tracking, training, summary, run status."""
from __future__ import annotations

import os
import sys
import time
from types import ModuleType

from harness import engines
from harness.errors import RunFailed
from harness.runtime import checkpoint, collectives, launches, node_telemetry, overfitting, trainer
from harness.runtime.distributed import init_process
from harness.runtime.lr import scaled_rate
from harness.spec import manifest as launch_manifest
from harness.spec.manifest import Manifest, Point
from harness.spec.schema import JobSpec
from harness.telemetry import nvml
from slurm import preemption
from tracking import open_tracker_in_background
from tracking.intervals import with_intervals


def run_training(launch: Manifest, point: Point, job: ModuleType) -> int:
    started = time.time()
    spec = point.spec
    # Horovod reads its knobs and NCCL its settings when the engine starts: set them before.
    os.environ.update(spec.communication.environment())
    if spec.training.profile_steps:
        os.environ.update(engines.info(spec.training.engine).profile_env)
    ctx = init_process(spec.training.seed, spec.training.engine)
    state = checkpoint.plan_resume(spec.checkpoint_dir, launch.resume)
    if ctx.is_chief:
        where = f"resuming at epoch {state.epoch + 1}" if state else "starting at epoch 1"
        print(f"{spec.name}: {ctx.size} process(es) on {ctx.device}, {where}", flush=True)
    # The launch created the run, or its launcher is creating it now (rank 0's tracking thread
    # waits for the id); a script sbatch-ed by hand (no run yet) continues the one its
    # checkpoint names on a requeue.
    run_id = point.run_id or (state.run_id if state else None)
    pending = run_id is None and bool(launch.options.get(launches.RUN_PENDING))
    # Rank 0 opens the MLflow run on a thread while training starts (seconds of MLflow import
    # and store checks no rank waits for); calls made meanwhile are replayed into it.
    tracker = open_tracker_in_background(
        spec, ctx, state, derived_params(spec, ctx), run_id, enabled=bool(launch.tracking_uri),
        run_to_come=(lambda: launches.wait_for_run(launch.path, point.index)) if pending else None)
    record_job_file(launch, ctx, tracker)
    check_requeue_cap(ctx, tracker)
    # Other nodes' telemetry writes into the run by its id; without one from the launch, a
    # multi-node job waits here for rank 0 to create it.
    if len(ctx.hosts) > 1 and launch.tracking_uri and run_id is None:
        run_id = ctx.engine.broadcast_object(tracker.run_id)
    sampler = node_telemetry.start(spec, ctx, tracker, run_id if len(ctx.hosts) > 1 else None,
                                   launch.created)
    try:
        outcome = trainer.train(spec, job, ctx, tracker, state)
        if launch.options.get(collectives.MEASURE_ALLREDUCE):
            measure_communication(spec, ctx, outcome, tracker)
        telemetry_lines, samples = node_telemetry.finish(sampler, ctx, tracker)
        sampler = None
        if ctx.is_chief:
            timeline = tracker.log_timeline(spec, samples, outcome.epoch_ends)
            summarize(spec, outcome, tracker, time.time() - started, telemetry_lines, timeline)
            if spec.tracking.log_model:
                tracker.log_model(ctx.engine.chief_model(outcome.model, job))
        tracker.finish("FINISHED")
        return 0
    except preemption.Preempted as stop:
        return preempted(stop, ctx, tracker)
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as e:
        if preemption.terminating():  # the signal surfaced through TF's C++ as another error
            tracker.finish("KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise KeyboardInterrupt("signal") from None
        tracker.finish("FAILED", f"{type(e).__name__}: {e}"[:500])
        raise
    finally:
        if sampler is not None:
            sampler.stop()


def record_job_file(launch: Manifest, ctx, tracker) -> None:
    """The job file's hash as a tag; for a queued job, whether it changed after submission."""
    tags, note = launch_manifest.provenance(launch)
    tracker.set_tags(tags)
    if note and ctx.is_chief:
        print(note, flush=True)


def derived_params(spec: JobSpec, ctx) -> dict:
    """Parameters only the runtime knows: the scaled rate, the GPUs and their driver (rank 0's
    run records them; the other ranks skip the NVML reads)."""
    if not ctx.is_chief:
        return {}
    t = spec.training
    with nvml.session() as lib:  # one NVML session for both reads
        names = nvml.gpu_names(lib) if lib else []
        drivers = nvml.driver_versions(lib) if lib else {}
    return {"lr.scaled": scaled_rate(t.learning_rate, t.lr_scaling, ctx.size),
            # The CPUs rank 0 may really run on (srun's binding), next to the threads it was given.
            "cpus.per_process": len(os.sched_getaffinity(0)),
            "cpus.omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "gpu_models": ",".join(names) or "none",
            **{f"version.{k}": v for k, v in drivers.items()}}


def measure_communication(spec: JobSpec, ctx, outcome, tracker) -> None:
    """Every rank: time an allreduce of this model's gradient size; rank 0 logs it."""
    figures = collectives.measure_gradient_allreduce(outcome.model, spec.training.fp16_allreduce,
                                                     ctx.engine, ctx.size)
    tracker.log_metrics(figures, step=0)


def preempted(stop: preemption.Preempted, ctx, tracker) -> int:
    """The run waits, KILLED for now, for the requeued job to resume it.

    After the warning (USR2, minutes ahead) the job requeues itself; after SIGTERM (preemption or
    scancel, SIGKILL follows within the grace time) SLURM decides, and the metric flush is short.
    """
    name, since = preemption.stopped_by()
    by_warning = name == preemption.SIGNAL.name
    where = f"checkpoint at epoch {stop.checkpoint_epoch}"
    then = (f"exiting {preemption.EXIT_REQUEUE} so the job requeues" if by_warning else
            "a preempted job requeues; after scancel, harness submit --resume continues it")
    # Every rank says where it stopped: the same batch on all of them is the protocol's promise.
    print(f"rank {ctx.rank}: stopped before batch {stop.batch} of epoch {stop.epoch + 1}",
          flush=True)
    if ctx.is_chief:
        print(f"{name}: stopped during epoch {stop.epoch + 1} on every rank, {since:.1f} s after "
              f"the signal; {where}; {then}", flush=True)
    # One value per attempt: the run's history shows every preemption, requeue count = step.
    tracker.log_metrics({"slurm/preempted_in_epoch": stop.epoch + 1,
                         "slurm/stop_after_signal_s": since}, step=ctx.slurm.restart_count)
    tracker.finish("KILLED", f"{name} during epoch {stop.epoch + 1}; {where}; resumable",
                   flush_s=30.0 if by_warning else 3.0)
    return preemption.EXIT_REQUEUE if by_warning else preemption.EXIT_TERMINATED


def check_requeue_cap(ctx, tracker) -> None:
    """A job that dies on every attempt must not requeue forever: past the cap, it fails."""
    cap = preemption.requeue_cap()
    if ctx.slurm.restart_count <= cap:
        return
    reason = (f"requeued {ctx.slurm.restart_count} times, more than the partition's "
              f"max_requeues={cap}; the checkpoint is kept: fix the cause, then "
              "harness submit --resume")
    tracker.finish("FAILED", reason)
    raise RunFailed(reason)


def held_out_text(final: dict) -> str:
    """``name value`` per figure, its interval beside it; counts print as integers."""
    parts = []
    for name, value, interval in with_intervals(final):
        text = f"{name} {value}" if isinstance(value, int) else f"{name} {value:.4f}"
        if interval is not None:
            text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
        parts.append(text)
    return "  ".join(parts)


def summarize(spec: JobSpec, outcome: trainer.Outcome, tracker, seconds: float,
              telemetry_lines: list, timeline=None) -> None:
    """The closing lines: final and best metrics, the verdict, where everything is."""
    history, t = outcome.history, spec.training
    judged = overfitting.judge(history, t.patience, t.min_delta, t.gl_threshold)
    verdict = judged.text()
    final_metrics = dict(outcome.final)
    if judged.best_epoch is not None:  # epochs count from 1 here, as in every line a person reads
        final_metrics.update(best_epoch=judged.best_epoch,
                             best_val_loss=history[judged.best_epoch - 1]["val_loss"],
                             **judged.metrics())
    tracker.log_metrics(final_metrics, step=len(history))
    tracker.set_tags({"overfitting": verdict, "overfitting.kind": judged.kind})
    marks = {"best_epoch": judged.best_epoch, "onset_epoch": judged.onset_epoch,
             "kind": judged.kind}
    tracker.log_summary(spec, history, final_metrics, verdict, marks, telemetry_lines, timeline)
    last = history[-1] if history else {}
    out = sys.stdout
    print(f"done: {len(history)} epochs in {seconds:.0f} s ({len(history) - outcome.start_epoch} this run)",
          file=out)
    if last:
        print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in last.items()
                                     if k in ("loss", "val_loss", "accuracy", "val_accuracy",
                                              "generalization_gap")), file=out)
    if outcome.final:
        print("held-out: " + held_out_text(outcome.final), file=out)
    print(f"verdict: {verdict}", file=out)
    for line in telemetry_lines:
        print(line, file=out)
    if outcome.stopped_early_at is not None:
        print(f"early stopping at epoch {outcome.stopped_early_at + 1} (patience {t.patience}): "
              f"best weights of epoch {judged.best_epoch} restored, val_loss "
              f"{outcome.restored_val_loss:.6f} (best {final_metrics['best_val_loss']:.6f})",
              file=out)
    print(f"checkpoints: {spec.checkpoint_dir.resolve()}", file=out)
    if tracker.location:
        print(f"tracking: {tracker.location}", file=out)
    out.flush()
