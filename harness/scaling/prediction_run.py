"""The two ``--predict`` flows: after a sweep (validated at every measured size) and on its own.

After a sweep the one-process step time is the sweep's N=1 and every measured size is checked:
measured against predicted efficiency, the error in points against ``TOLERANCE``.  On its own
(``--step-ms`` or ``--from-run``) nothing is trained: the step time is given or read from an
earlier 1-process run, the gradient bytes come from building the spec's model.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from harness.errors import UserError
from harness.scaling import comm_model, links as link_sources, predict
from harness.spec.schema import JobSpec

# Measured vs predicted efficiency, absolute: an error beyond it is flagged OUTSIDE.  It is the
# run-to-run spread of one 2-process measurement on the two-node test cluster (one 1 Gbit/s
# configuration measured 60% to 77% over three runs); a closer check would flag noise.
TOLERANCE = 0.15


def target_partition(cluster_name: str, spec: JobSpec):
    from slurm.cluster import load_cluster
    cluster = load_cluster(cluster_name)
    name, part = cluster.partition(spec.resources.partition)
    return f"{cluster.name}/{name}", part


def probe_links(paths) -> list[dict]:
    return [link_sources.from_probe(Path(p)) for p in paths]


def partition_forecast(basis: predict.Basis, links, part, label: str, floor_s: float,
                       tracker, title: str, measured: Optional[dict] = None) -> str:
    """Table, recommendation, plot and CSV for the whole partition; logged to ``tracker``."""
    points = predict.partition_points(basis, links, part.nodes, part.gpus_per_node, floor_s)
    total = part.nodes * part.gpus_per_node
    print(f"predict: {label}, {part.nodes} nodes x {part.gpus_per_node} GPUs; one process "
          f"{basis.step_s * 1e3:.1f} ms per step ({basis.source}), "
          f"{basis.gradient_bytes / 1e6:.2f} MB of float32 gradients, "
          f"communication floor {floor_s * 1e3:.1f} ms per step at N>1", flush=True)
    print("predict: links: " + "; ".join(links.sources), flush=True)
    print(predict.table(points, part.gpus_per_node), flush=True)
    advice = predict.recommend(points, part.gpus_per_node)
    print(f"recommendation: {advice}", flush=True)
    for point in points:
        tracker.log_metrics(predict.as_metrics(point), step=point.processes)
    tracker.set_tags({"scale.recommendation": advice[:5000], "scale.predicted_to": f"{label} ({total} GPUs)"})
    with tempfile.TemporaryDirectory() as tmp:
        for path in (predict.write_csv(points, Path(tmp) / "prediction.csv"),
                     predict.plot(points, Path(tmp) / "prediction.png", title, measured)):
            tracker.log_artifact(path)
    return advice


def validate(rows, basis: predict.Basis, layouts: dict, links, floor_s: float, tracker) -> dict:
    """Measured against predicted efficiency at every measured size above one; {N: error}."""
    errors = {}
    for row in rows:
        if row.processes == 1:
            continue
        layout = layouts[row.processes]
        p = comm_model.predict_layout(basis.step_s, basis.gradient_bytes, layout, links, floor_s)
        error = row.efficiency - p.efficiency
        errors[row.processes] = error
        verdict = "within" if abs(error) <= TOLERANCE else "OUTSIDE"
        bounds = (f" (95% bounds {row.efficiency_low:.0%}..{row.efficiency_high:.0%})"
                  if row.efficiency_low == row.efficiency_low else "")
        print(f"validate: N={row.processes} ({layout}): measured {row.efficiency:.0%}{bounds}, "
              f"predicted {p.efficiency:.0%} (compute {p.compute_s * 1e3:.1f} ms + the larger of "
              f"floor {p.floor_s * 1e3:.1f} and allreduce {p.allreduce_s * 1e3:.1f} ms): "
              f"error {error * 100:+.0f} points, {verdict} the +-{TOLERANCE * 100:.0f} tolerance",
              flush=True)
        tracker.log_metrics({"scale/model_efficiency": p.efficiency,
                             "scale/model_error": error}, step=row.processes)
    return errors


def floors(rows, results, basis: predict.Basis) -> dict:
    """The communication floor each measured N>1 shows (None where its allreduce dominated)."""
    found = {}
    for row in rows:
        m = results[row.processes].metrics
        if row.processes > 1 and "comm/allreduce_s" in m:
            step = basis.batch / row.per_process
            found[row.processes] = comm_model.measured_floor(step, basis.step_s,
                                                             m["comm/allreduce_s"])
    return found


def results_rate(rows, n: int) -> float:
    return next(r.throughput.mean for r in rows if r.processes == n)


def report_floors(found: dict, parent) -> None:
    for n, seconds in found.items():
        if seconds is None:
            print(f"comm floor: N={n}: not measurable, the allreduce is most of the step", flush=True)
            continue
        print(f"comm floor: N={n}: {seconds * 1e3:.1f} ms per step beyond the compute while the "
              "timed allreduce is far less (pass --comm-floor-ms to model it; near 0 on GPU nodes)",
              flush=True)
        parent.log_metrics({"scale/comm_floor_s": seconds}, step=n)


def after_sweep(plan, spec: JobSpec, parent, rows, results, layouts: dict) -> None:
    """The sweep's measurements -> the communication floor, validation, and the partition's forecast."""
    batch = spec.training.batch_size
    weights = next(iter(results.values())).metrics["model/trainable_parameters"]
    if plan.one_step_s:
        basis = predict.Basis(plan.one_step_s, weights * 4, batch, plan.one_step_source)
    else:
        basis = predict.Basis(batch / results_rate(rows, 1), weights * 4, batch,
                              "measured: this sweep's N=1")
    report_floors(floors(rows, results, basis), parent)
    label, part = target_partition(plan.cluster, spec)
    probes = probe_links(plan.probes)
    measured_bw = {layouts[n]: r.metrics["comm/busbw_GBps"] for n, r in results.items()
                   if r.metrics.get("comm/busbw_GBps")}
    profile = link_sources.from_profile(part, label)
    sweep_links = link_sources.from_sweep(measured_bw)
    floor_s = plan.comm_floor_ms / 1e3
    check = link_sources.resolve(profile, probes, sweep_links,
                                 _kinds_in(layouts.values()))
    validate(rows, basis, layouts, check, floor_s, parent)
    # A local sweep measured this machine, not the partition's nodes: its links stay out.
    kinds = link_sources.needed(part.nodes, part.gpus_per_node)
    target = link_sources.resolve(profile, probes, None if plan.local else sweep_links, kinds)
    measured = None if plan.local else {r.processes: r.efficiency for r in rows}
    partition_forecast(basis, target, part, label, floor_s, parent,
                       f"{spec.name}: predicted on {label}", measured)


def _kinds_in(layouts) -> tuple:
    used = set()
    for layout in layouts:
        used |= set(link_sources.needed(layout.nodes, layout.per_node))
    return tuple(sorted(used))


def step_from_run(run_id: str) -> tuple[float, int, str]:
    """(step seconds, batch per process, source) from an earlier 1-process run."""
    from tracking.run import reading_client, tracking_uri
    client = reading_client(f"--from-run {run_id}")
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise UserError(f"--from-run {run_id}: no such run at {tracking_uri()} "
                        f"({type(e).__name__})") from None
    processes = run.data.params.get("processes")
    if processes != "1":
        raise UserError(f"--from-run {run_id}: ran {processes} processes; the prediction needs "
                        "a 1-process run (its step has no allreduce in it)")
    history = sorted(client.get_metric_history(run_id, "throughput/samples_per_sec"),
                     key=lambda m: m.step)
    windows = [m.value for m in history[1:] or history]  # the first epoch warms up
    if not windows:
        raise UserError(f"--from-run {run_id}: logged no throughput/samples_per_sec")
    batch = int(run.data.params["batch_size.per_process"])
    return batch / statistics.median(windows), batch, (
        f"run {run_id[:8]}, median of {len(windows)} epoch(s)")


def gradient_bytes_of(spec: JobSpec) -> float:
    """Float32 gradient bytes of the spec's model, built on the CPU without training."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner
    from harness.spec.jobs import resolve_job
    from harness.runtime.collectives import gradient_bytes
    job = resolve_job(spec.job, Path(spec.spec_path).parent)
    return gradient_bytes(job.build_model(spec.data), fp16=False)


def one_step(spec: JobSpec, step_ms: Optional[float], from_run: str) -> tuple[float, str]:
    """(seconds, source) of one process's step: given, or read from an earlier run of this batch."""
    predict.check_basis(step_ms, 0.0)
    if not from_run:
        return step_ms / 1e3, "given (--step-ms)"
    step_s, batch, source = step_from_run(from_run)
    if batch != spec.training.batch_size:
        raise UserError(f"--from-run {from_run}: it trained {batch} samples per step and process, "
                        f"the spec {spec.training.batch_size}; use a run of the same batch size")
    return step_s, source


def standalone(spec: JobSpec, cluster_name: str, step_ms: Optional[float], from_run: str,
               probes, floor_ms: float) -> int:
    """`harness scale SPEC --predict --step-ms X | --from-run ID`: no training, a forecast."""
    from tracking.run import start_run
    predict.check_basis(None, floor_ms)  # one_step checks the step
    label, part = target_partition(cluster_name, spec)
    target = link_sources.resolve(link_sources.from_profile(part, label), probe_links(probes),
                                  None, link_sources.needed(part.nodes, part.gpus_per_node))
    step_s, source = one_step(spec, step_ms, from_run)
    basis = predict.Basis(step_s, gradient_bytes_of(spec), spec.training.batch_size, source)
    tracker = start_run(spec.experiment, f"predict {spec.name} on {label}",
                        {"harness.kind": "scale-prediction"}, spec.spec_path)
    tracker.log_params({"step_s.one_process": f"{step_s:.6g}", "step.source": source,
                        "gradient_bytes.fp32": int(basis.gradient_bytes), "partition": label,
                        "comm_floor_s": floor_ms / 1e3, "links": " ; ".join(target.sources)})
    partition_forecast(basis, target, part, label, floor_ms / 1e3, tracker,
                       f"{spec.name}: predicted on {label}")
    tracker.finish("FINISHED")
    print(f"predict: logged to {tracker.location}", flush=True)
    return 0
