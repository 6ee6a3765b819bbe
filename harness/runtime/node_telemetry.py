"""Telemetry for a training job: one sampler per node writing into the job's MLflow run.

Local rank 0 of every node samples; rank 0 sends its node's samples through
the run's tracker, other nodes through their own batched sender to the same
run (the run id comes from rank 0).  At the end every node's summary is
gathered to rank 0, which logs the figures and flags once.
"""
from __future__ import annotations

from typing import Optional

from harness.telemetry import sampler as telemetry
from harness.telemetry import summary as telemetry_summary
from harness.telemetry.retention import Retention
from harness.runtime.distributed import ProcessContext
from harness.spec.schema import JobSpec


def _sink_for(ctx: ProcessContext, tracker, run_id: Optional[str], origin: float):
    """Where one node's samples go; steps are seconds since the launch was written, so the
    attempts of a requeued job follow one another on one axis instead of overlapping."""
    if ctx.is_chief:
        return lambda metrics, t: tracker.log_system_metrics(metrics, step=int(t - origin),
                                                             timestamp_s=t)
    if run_id is None:
        return lambda metrics, t: None
    from tracking.run import attach
    node = attach(run_id, fallback_path(ctx, run_id))  # this node's own sender, the same run

    def sink(metrics, t):
        node.log_system_metrics(metrics, step=int(t - origin), timestamp_s=t)
    sink.tracker = node
    return sink


def archive_path(spec: JobSpec):
    """The node's full-rate samples: beside the checkpoints, one file per node and attempt."""
    import socket
    import time
    host = socket.gethostname().split(".")[0]
    return (spec.checkpoint_dir.parent / "telemetry"
            / f"{host}-{time.strftime('%Y%m%d-%H%M%S')}.csv.gz")


def fallback_path(ctx: ProcessContext, run_id: str):
    from pathlib import Path
    return Path("runs") / f"telemetry-fallback-{run_id}-{ctx.hosts[0] if ctx.hosts else 'node'}.jsonl"


def start(spec: JobSpec, ctx: ProcessContext, tracker, run_id: Optional[str],
          origin: float) -> Optional[telemetry.Sampler]:
    if not spec.telemetry.enabled or ctx.local_rank != 0:
        return None
    settings = spec.telemetry
    # Bounded in the store whatever the job's length; every sample in the node's archive.
    sink = Retention(_sink_for(ctx, tracker, run_id, origin), settings.full_rate_s,
                     settings.window_s, archive_path(spec))
    sampler = telemetry.Sampler(sink, interval_s=settings.interval_s,
                                notify=lambda msg: print(msg, flush=True))
    return sampler.start()


def finish(sampler: Optional[telemetry.Sampler], ctx: ProcessContext, tracker) -> tuple[list, list]:
    """Stop sampling, gather every node's summary on rank 0, log it.

    Returns the report lines and rank 0's own node's samples (for the timeline plot).
    """
    mine = {}
    if sampler is not None:
        sampler.stop()
        archive = sampler.sink.close()  # the last window's means, the archive complete
        node = getattr(sampler.sink, "tracker", None)
        (node or tracker).log_artifact(archive, "telemetry")
        if node is not None:
            node.close()  # flush this node's samples; rank 0 owns the run's status
        totals = {(sampler.host, g.index): g.memory_total_mb for g in sampler.gpus}
        summaries = sampler.summary.summaries(totals)
        mine = {"host": sampler.host, "gpus": sampler.inventory(), "summaries": summaries}
    nodes = [n for n in ctx.engine.allgather_object(mine) if n]
    if not ctx.is_chief or not nodes:
        return [], []
    summaries = {k: v for n in nodes for k, v in n["summaries"].items()}
    advice = telemetry_summary.flags(summaries)
    tracker.log_metrics(telemetry_summary.as_metrics(summaries), step=0)
    gpus = [f"{n['host']}:gpu_{g['index']}={g['name']} {g['uuid']} bus {g['pci_bus_id']}"
            for n in nodes for g in n["gpus"]]
    tracker.set_tags({"telemetry.gpus": "; ".join(gpus) or "none found",
                      "telemetry.flags": " | ".join(advice) or "none"})
    return report_lines(nodes, summaries, advice), (sampler.timeline.items if sampler else [])


def report_lines(nodes, summaries, advice) -> list[str]:
    if not summaries:
        hosts = ", ".join(n["host"] for n in nodes)
        return [f"telemetry: no GPU found; host metrics recorded under system/<host>/ for {hosts}"]
    lines = []
    for (host, index), s in sorted(summaries.items()):
        lines.append(
            f"telemetry {host} GPU {index}: busy {s.get('utilization_mean_percentage', 0):.0f}% "
            f"(p95 {s.get('utilization_p95_percentage', 0):.0f}%), peak memory "
            f"{s.get('memory_peak_megabytes', 0):.0f} MB, {s.get('power_mean_watts', 0):.0f} W, "
            f"{s.get('energy_wh', 0):.2f} Wh, {s.get('gpu_hours', 0):.3f} GPU-h, "
            f"throttled {s.get('throttled_fraction', 0):.0%}")
    return lines + [f"flag: {a}" for a in advice]

