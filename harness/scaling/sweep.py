"""``harness scale``: one job at several sizes, a child MLflow run each, and why it scales as it does.

For every size N the job trains ``repeats`` + 1 epochs; the first is warm-up
and each later epoch is one timing window (samples/s after its first step).
The sizes are a group (harness/group/, the core a hyperparameter sweep shares): each size is
a point with its own process layout and a child run of one parent run (tag ``scale.id``; a
hyperparameter sweep tags ``sweep.id``).  The workers also time an allreduce of the model's gradient size, which the
communication model (harness.scaling.comm_model) turns into a predicted efficiency.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from harness.engines import check_compiled_steps
from harness.scaling import comm_model
from harness.scaling import stats as scaling
from harness.errors import RunFailed, UserError
from harness.spec.loader import load_spec
from harness.runtime.collectives import MEASURE_ALLREDUCE
from harness.spec.schema import JobSpec

WARMUP_EPOCHS = 1


@dataclass
class SizeResult:
    processes: int
    run_id: str
    windows: list  # samples/s of each timing window
    metrics: dict  # the child run's latest metrics


@dataclass(frozen=True)
class SweepPlan:
    spec_path: str
    overrides: list
    sizes: list
    repeats: int
    local: bool
    layout: str
    cluster: str
    sbatch: dict = field(default_factory=dict)  # --sbatch options for every size's job
    predict: bool = False  # validate the model at each size and forecast the whole partition
    one_step_s: Optional[float] = None  # one process's step measured before (--step-ms, --from-run)
    one_step_source: str = ""
    probes: tuple = ()  # `harness probe --out` files: measured links
    comm_floor_ms: float = 0.0  # the least a distributed step spends beyond its compute


def mixed_precision_pays(plan: SweepPlan, spec: JobSpec) -> bool:
    """Whether the sweep's GPUs would run mixed precision faster: not on already, and the
    partition's compute capability is known and has tensor cores (never for a local sweep,
    whose processes share this machine's CPU or GPUs of unknown kind)."""
    if plan.local or spec.training.mixed_precision:
        return False
    from slurm.cluster import load_cluster
    from harness.spec.schema import MIXED_PRECISION_MIN_CC
    _, part = load_cluster(plan.cluster).partition(spec.resources.partition)
    if not part.compute_capability:
        return False
    return tuple(map(int, part.compute_capability.split("."))) >= MIXED_PRECISION_MIN_CC


def size_layouts(plan: SweepPlan, spec: JobSpec) -> dict:
    """Where each size runs: one machine locally; the partition's nodes as the plan lays them out."""
    if plan.local:
        return {n: comm_model.Layout(1, n) for n in plan.sizes}
    from slurm.cluster import load_cluster
    _, part = load_cluster(plan.cluster).partition(spec.resources.partition)
    layouts = {}
    for n in plan.sizes:
        try:
            layouts[n] = comm_model.Layout(*scaling.layout(n, part.gpus_per_node, part.nodes,
                                                           plan.layout))
        except ValueError as e:
            raise UserError(f"--gpus {n}: {e}") from None
    return layouts


def size_overrides(plan: SweepPlan, spec: JobSpec, n: int, sweep_id: str) -> list[str]:
    """The job as the sweep runs it at size N: timing windows, no early stop, its own checkpoints."""
    folder = Path("runs") / spec.name / "scale" / sweep_id / f"np{n}"
    return plan.overrides + [f"training.epochs={plan.repeats + WARMUP_EPOCHS}",
                             "training.early_stopping=false", f"checkpoint.dir={folder}",
                             f"checkpoint.every_epochs={plan.repeats + WARMUP_EPOCHS}"]


def scale_folder(spec: JobSpec, sweep_id: str) -> Path:
    return (Path.cwd() / "runs" / spec.name / "scale" / sweep_id).resolve()


def size_launch(plan: SweepPlan, spec: JobSpec, sweep_id: str, layouts: dict,
                parent_run_id: str = "", children: Optional[dict] = None):
    """Every size as a point of one launch (not yet written): its own spec and process layout,
    its child run once the group exists."""
    from harness.spec import manifest
    from tracking.run import tracking_uri
    points = []
    for i, n in enumerate(plan.sizes):
        where = layouts[n]
        shape = [] if plan.local else [f"resources.nodes={where.nodes}",
                                       f"resources.gpus_per_node={where.per_node}"]
        sized = load_spec(plan.spec_path, size_overrides(plan, spec, n, sweep_id) + shape)
        points.append(manifest.Point(i, sized, (children or {}).get(n), f"N={n}",
                                     {"processes": n}, manifest.Layout(n, where.nodes)))
    return manifest.new("scale", points, points[0].layout, tracking_uri(), not plan.local,
                        {"kind": "scale", "id": sweep_id, "parent_run_id": parent_run_id},
                        {MEASURE_ALLREDUCE: True})


def check_on_slurm(plan: SweepPlan, spec: JobSpec, sweep_id: str, layouts: dict) -> None:
    """Every size's job passes submit's checks and SLURM would accept it, before any run exists."""
    from harness.group import cluster as group_cluster
    from slurm.cluster import load_cluster
    from tracking.run import submission_facts
    unwritten = size_launch(plan, spec, sweep_id, layouts)
    _, estimate = submission_facts(unwritten.points[0].spec)
    group_cluster.check(unwritten, group_cluster.manifest_path(scale_folder(spec, sweep_id)),
                        load_cluster(plan.cluster), plan.sbatch, None, False, estimate)


def run_sizes(plan: SweepPlan, spec: JobSpec, sweep_id: str, parent_run_id: str, children: dict,
              layouts: dict) -> None:
    """Every size, one after another: on this machine (the group's local runner, its lines on the
    terminal), or as one SLURM job each, queued afterany the previous (sizes never share nodes)."""
    from harness.spec import manifest
    launch = manifest.write(size_launch(plan, spec, sweep_id, layouts, parent_run_id, children),
                            scale_folder(spec, sweep_id))
    if plan.local:
        run_local(plan, launch)
        return
    from harness.group import cluster as group_cluster
    from slurm.cluster import load_cluster
    cluster = load_cluster(plan.cluster)
    jobs = group_cluster.submit(launch, group_cluster.render(launch, launch.path, cluster,
                                                             plan.sbatch, None, False),
                                launch.folder)
    by_size = {plan.sizes[i]: job for i, job in jobs.items()}
    for n, job in by_size.items():
        print(f"scale: N={n}: job {job}", flush=True)
    wait_for_jobs(by_size)


def run_local(plan: SweepPlan, launch) -> None:
    """A size that fails ends the run: there is nothing to compare it with."""
    from harness.group import local
    from harness.runtime.prepare import prepare_launch
    prepare_launch(launch)
    codes = local.run_points(launch, 1, launch.folder, stream=True, label="scale",
                             stop_on_failure=True)
    for i, n in enumerate(plan.sizes):
        if codes.get(i, 0) != 0:
            raise RunFailed(f"the {n}-process run of the sweep failed (its lines are above)")


def wait_for_jobs(jobs: dict[int, str], poll_s: float = 1.0, max_poll_s: float = 5.0) -> None:
    """Until every job has left the queue; then each must have COMPLETED."""
    from slurm.status import finished_states, queued_jobs
    last, delay = {}, poll_s
    while True:
        queued = queued_jobs()
        states = {n: queued[j]["state"] if j in queued else None for n, j in jobs.items()}
        for n, state in states.items():
            if state and state != last.get(n):
                print(f"scale: job {jobs[n]} (N={n}) {state}", flush=True)
        # Quick after a change, then backing off: the next size starts soon after one ends.
        delay = poll_s if states != last else min(delay * 1.5, max_poll_s)
        last = states
        if not any(states.values()):
            break
        time.sleep(delay)
    states = finished_states(list(jobs.values()))
    for n, job in jobs.items():
        state = states[job]
        if state != "COMPLETED":
            raise RunFailed(f"job {job} (N={n}) ended {state}; see runs/*/slurm/*-{job}.out")


def collect(client, run_id: str, n: int) -> SizeResult:
    history = client.get_metric_history(run_id, "throughput/samples_per_sec")
    windows = [m.value for m in sorted(history, key=lambda m: m.step) if m.step >= WARMUP_EPOCHS]
    if not windows:
        raise RunFailed(f"the {n}-process run {run_id} logged no throughput after warm-up")
    return SizeResult(n, run_id, windows, client.get_run(run_id).data.metrics)


def gpu_utilisation(metrics: dict) -> Optional[float]:
    values = [v for k, v in metrics.items()
              if re.fullmatch(r"telemetry/.+/gpu_\d+/utilization_mean_percentage", k)]
    return sum(values) / len(values) if values else None


def rows_with_model(results: dict[int, SizeResult], batch: int, one_step_s: Optional[float] = None,
                    floor_s: float = 0.0) -> tuple[list, dict]:
    """The table's rows, with the model's prediction where the allreduce was timed.  Efficiency
    is against the sweep's N=1, or against ``one_step_s`` (one process's step, measured before)."""
    baseline = scaling.Interval(batch / one_step_s, math.nan, math.nan, 0) if one_step_s else None
    rows = scaling.scale_rows({n: scaling.mean_ci(r.windows) for n, r in results.items()},
                              baseline)
    compute_s = one_step_s or batch / (rows[0].throughput.mean / rows[0].processes)
    predictions = {}
    for i, row in enumerate(rows):
        m = results[row.processes].metrics
        if row.processes > 1 and m.get("comm/busbw_GBps"):
            p = comm_model.predict(compute_s, m["comm/gradient_bytes"], row.processes,
                                   m["comm/busbw_GBps"] * 1e9, floor_s)
            predictions[row.processes] = p
            rows[i] = replace(row, predicted_efficiency=p.efficiency,
                              predicted_overlap=p.efficiency_overlap)
    return rows, predictions


def report(parent, spec: JobSpec, rows: list, predictions: dict,
           results: dict[int, SizeResult], mixed_precision_pays: bool = False) -> None:
    """The table and diagnosis on stdout; metrics (step = N), CSV and plots on the parent run."""
    from harness.group.results import publish
    from harness.scaling import report as scale_report
    print(scale_report.table(rows), flush=True)
    grad = next((r.metrics.get("comm/gradient_bytes") for r in results.values()), None)
    if grad:
        print(f"model: {grad / 1e6:.2f} MB of gradients per step"
              f"{' (fp16 compressed)' if spec.training.fp16_allreduce else ''}, "
              f"batch {spec.training.batch_size} per process")
    for row in rows:
        p = predictions.get(row.processes)
        if p is None:
            continue
        util = gpu_utilisation(results[row.processes].metrics)
        print(f"N={row.processes}: step {p.compute_s * 1e3:.1f} ms compute + "
              f"{p.allreduce_s * 1e3:.1f} ms allreduce at "
              f"{results[row.processes].metrics['comm/busbw_GBps']:.3g} GB/s bus bandwidth; "
              f"{comm_model.diagnose(row.efficiency, p, util, mixed_precision_pays)}", flush=True)
    for row in rows:
        parent.log_metrics(scale_metrics(row), step=row.processes)
    title = f"{spec.name}: scaling"

    def figures(folder: Path, table: Path) -> list[Path]:
        return [scale_report.throughput_png(rows, folder / "throughput.png", title),
                scale_report.efficiency_png(rows, folder / "efficiency.png", title)]
    publish(parent.uri, parent.run_id, scale_report.as_dicts(rows), scale_report.COLUMNS,
            "scaling.csv", figures)


def scale_metrics(row) -> dict:
    """One size's figures for the parent run; intervals and predictions only where they exist."""
    metrics = {"scale/samples_per_sec": row.throughput.mean, "scale/speedup": row.speedup,
               "scale/efficiency": row.efficiency}
    if row.throughput.meaningful:
        metrics.update({"scale/ci95_low": row.throughput.low, "scale/ci95_high": row.throughput.high})
    if row.predicted_efficiency is not None:
        metrics["scale/predicted_efficiency"] = row.predicted_efficiency
    return metrics


def sweep(plan: SweepPlan) -> int:
    from harness.group.runs import Child, open_group
    from tracking.run import check_reachable, tracking_uri
    from tracking.runs import RunStore
    spec = load_spec(plan.spec_path, plan.overrides)
    layouts = size_layouts(plan, spec)  # a size that does not fit fails before anything runs
    t = spec.training
    check_compiled_steps(t.engine, t.steps_per_execution, t.jit_compile, max(plan.sizes))
    if plan.predict:
        check_prediction_inputs(plan, spec)
    check_reachable(spec)
    uri = tracking_uri()
    sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not plan.local:
        check_on_slurm(plan, spec, sweep_id, layouts)
    parent, by_index = open_group(
        "scale", sweep_id, spec.experiment, f"scale {spec.name} N={plan.sizes}", spec.spec_path,
        sweep_params(plan, spec), [Child(i, f"{spec.name} N={n}", {"scale.processes": str(n)})
                                   for i, n in enumerate(plan.sizes)])
    children = {n: by_index[i] for i, n in enumerate(plan.sizes)}
    print(f"scale: sweep {sweep_id}: sizes {plan.sizes}, {plan.repeats} timing windows each "
          f"after {WARMUP_EPOCHS} warm-up epoch; parent {parent.location}", flush=True)
    try:
        client = RunStore(uri)  # reads the children's results back
        run_sizes(plan, spec, sweep_id, parent.run_id, children, layouts)
        results = {n: collect(client, children[n], n) for n in plan.sizes}
        rows, predictions = rows_with_model(results, spec.training.batch_size, plan.one_step_s,
                                            plan.comm_floor_ms / 1e3)
        report(parent, spec, rows, predictions, results, mixed_precision_pays(plan, spec))
        if plan.predict:
            from harness.scaling import prediction_run
            prediction_run.after_sweep(plan, spec, parent, rows, results, layouts)
        parent.finish("FINISHED")
        print(f"scale: parent run {parent.run_id} with {len(children)} child runs; CSV and plots "
              "logged", flush=True)
        return 0
    except KeyboardInterrupt:
        parent.finish("KILLED", "interrupted")
        raise
    except BaseException as e:
        parent.finish("FAILED", f"{type(e).__name__}: {e}"[:500])
        raise


def check_prediction_inputs(plan: SweepPlan, spec: JobSpec) -> None:
    """What --predict needs, checked before a job is queued: N=1, the probes, the partition."""
    from harness.scaling import prediction_run
    if 1 not in plan.sizes and plan.one_step_s is None:
        raise UserError(f"--gpus {','.join(map(str, plan.sizes))}: --predict needs 1 among the "
                        "sizes (the one-process step time), or --step-ms / --from-run")
    prediction_run.predict.check_basis(None, plan.comm_floor_ms)
    prediction_run.probe_links(plan.probes)
    prediction_run.target_partition(plan.cluster, spec)


def sweep_params(plan: SweepPlan, spec: JobSpec) -> dict:
    return {"sizes": ",".join(map(str, plan.sizes)), "repeats": plan.repeats,
            "where": "local" if plan.local else "slurm", "layout": plan.layout,
            "spec": plan.spec_path, "batch_size.per_process": spec.training.batch_size,
            "fp16_allreduce": spec.training.fp16_allreduce,
            "mixed_precision": spec.training.mixed_precision}
