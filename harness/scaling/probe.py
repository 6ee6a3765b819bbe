"""``harness probe``: a pre-flight of the allocation or this machine, run on every rank.

Hosts, GPUs (NVML inventory), versions, the Horovod build, and an allreduce
bandwidth sweep with the engine (Horovod, or TensorFlow's multi-worker strategy
with ``--engine tf``) and, under Horovod, with mpi4py, reported as bus bandwidth
(the nccl-tests convention).  Started like a training: ``harness probe``
launches it on local processes; inside a SLURM allocation run
``srun --mpi=pmix .venv/bin/python -m harness.scaling.probe`` (tf engine:
``srun .venv-tf/bin/python -m harness.scaling.probe --engine tf``).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from harness.engines import DEFAULT as DEFAULT_ENGINE, ENGINES
from harness.runtime.collectives import bus_bandwidth, time_allreduce

DEFAULT_SIZES = [1024 * 4 ** k for k in range(10)]  # 1 KB .. 256 MB


def engine_sweep(ctx, sizes: list[int]) -> list[dict]:
    """The engine's own allreduce at each size; the backend column names the engine."""
    return [_row(ctx.engine.name, nbytes, ctx.size, ctx.engine.time_allreduce(nbytes))
            for nbytes in sizes]


def mpi_sweep(sizes: list[int]) -> tuple[list[dict], str]:
    """mpi4py's Allreduce; empty with a reason when these processes are not one MPI job."""
    from harness.runtime.cluster_env import ClusterEnvironment
    if not ClusterEnvironment.detect().mpi_world:
        # Not started by mpirun or srun's MPI plugin (horovodrun --gloo): importing mpi4py would
        # make each process a singleton MPI job with its own orted daemon, which fails now and
        # then ("Unable to start a daemon on the local node") and would fail the whole probe.
        return [], ("not launched by MPI (horovodrun --gloo); use --controller mpi or "
                    "srun --mpi=pmix")
    try:
        from mpi4py import MPI
    except ImportError as e:
        return [], f"mpi4py unavailable ({e})"
    comm = MPI.COMM_WORLD
    import horovod.tensorflow as hvd
    if comm.Get_size() != hvd.size():
        return [], (f"not launched by MPI (MPI world size {comm.Get_size()}, Horovod size "
                    f"{hvd.size()}: horovodrun --gloo); use --controller mpi or srun --mpi=pmix")
    results = []
    for nbytes in sizes:
        send = np.ones(max(1, nbytes // 4), dtype=np.float32)
        recv = np.empty_like(send)
        seconds = time_allreduce(lambda: comm.Allreduce(send, recv, op=MPI.SUM), comm.Barrier,
                                 lambda v: comm.allreduce(v, op=MPI.MAX))
        results.append(_row("mpi4py", nbytes, comm.Get_size(), seconds))
    return results, ""


def _row(backend: str, nbytes: int, n: int, seconds: float) -> dict:
    row = {"backend": backend, "bytes": nbytes, "ranks": n, "seconds": seconds,
           "algbw_GBps": nbytes / seconds / 1e9}
    row["busbw_GBps"] = bus_bandwidth(nbytes, n, seconds) / 1e9 if n > 1 else float("nan")
    return row


def inventory(ctx) -> dict:
    """This process's view: host, GPUs by NVML, versions, the Horovod build."""
    from harness.telemetry import nvml as nvml_session
    from harness.telemetry.sampler import visible_gpus
    from tracking.provenance import versions
    errors: list = []
    with nvml_session.session(errors=errors) as nvml:
        try:
            gpus = [{"index": g.index, "name": g.name, "uuid": g.uuid}
                    for g in visible_gpus(nvml)] if nvml else []
        except Exception as e:  # NVML opened but cannot list: say so, the sweep still runs
            errors.append(e)
    if errors:  # no driver here: the sweep still runs on the CPU
        gpus = [{"error": type(errors[0]).__name__}]
    build = ctx.engine.build_info()
    return {"host": socket.gethostname(), "rank": ctx.rank, "local_rank": ctx.local_rank,
            "gpus": gpus, "versions": versions(nvml_session.driver_versions()),
            "engine": ctx.engine.name, "horovod_build": build}


def format_report(nodes: list[dict], rows: list[dict], mpi_note: str) -> str:
    hosts = sorted({n["host"] for n in nodes})
    first = nodes[0]
    lines = [f"probe: {len(nodes)} process(es) on {len(hosts)} host(s): {', '.join(hosts)}"]
    for host in hosts:
        gpus = next(n["gpus"] for n in nodes if n["host"] == host)
        names = [g.get("name") or f"none ({g.get('error')})" for g in gpus] or ["none"]
        lines.append(f"  {host}: GPUs {', '.join(names)}")
    b = first.get("horovod_build")
    if b:
        lines.append("horovod build: " + ", ".join(k for k in ("mpi", "gloo", "nccl") if b[k])
                     + f"; controller in use: {b['controller']}")
    else:
        lines.append(f"engine: {first.get('engine', 'horovod')} (TensorFlow MultiWorkerMirroredStrategy)")
    lines.append("versions: " + ", ".join(f"{k.removeprefix('version.')} {v}"
                                          for k, v in sorted(first["versions"].items())))
    lines.append(f"{'backend':<8} {'bytes':>11} {'time':>10} {'algbw GB/s':>11} {'busbw GB/s':>11}")
    for r in rows:
        lines.append(f"{r['backend']:<8} {r['bytes']:>11} {r['seconds'] * 1e3:>8.3f}ms "
                     f"{r['algbw_GBps']:>11.4g} {r['busbw_GBps']:>11.4g}")
    if mpi_note:
        lines.append(f"mpi4py: skipped, {mpi_note}")
    return "\n".join(lines)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="harness.scaling.probe")
    parser.add_argument("--sizes", default="", help="bytes, comma-separated (default 1 KB..256 MB)")
    parser.add_argument("--out", default="", help="write the results as JSON here (rank 0)")
    parser.add_argument("--mlflow", action="store_true", help="log to MLflow (experiment probe)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else DEFAULT_SIZES
    from harness.runtime.distributed import init_process
    ctx = init_process(seed=0, engine_name=args.engine)
    nodes = ctx.engine.allgather_object(inventory(ctx))
    rows = engine_sweep(ctx, sizes)
    mpi_rows, mpi_note = (mpi_sweep(sizes) if ENGINES[args.engine].joins_over_mpi
                          else ([], f"{args.engine} engine: no MPI"))
    if ctx.is_chief:
        result = {"nodes": nodes, "sweep": rows + mpi_rows, "mpi_note": mpi_note}
        print(format_report(nodes, rows + mpi_rows, mpi_note), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        if args.mlflow:
            log_probe(result)
    return 0


def log_probe(result: dict) -> Optional[str]:
    """One MLflow run in experiment 'probe': bus bandwidth per size (step = bytes)."""
    from tracking.run import start_run
    tracker = start_run("probe", "probe", {"harness.kind": "probe"}, "harness probe")
    hosts = sorted({n["host"] for n in result["nodes"]})
    tracker.log_params({"ranks": len(result["nodes"]), "hosts": ",".join(hosts)})
    for r in result["sweep"]:
        figures = {f"probe/{r['backend']}_seconds": r["seconds"]}
        if r["ranks"] > 1:
            figures[f"probe/{r['backend']}_busbw_GBps"] = r["busbw_GBps"]
        tracker.log_metrics(figures, step=r["bytes"])
    tracker.log_dict(result, "probe.json")
    tracker.finish("FINISHED")
    print(f"probe: logged to {tracker.location}", flush=True)
    return tracker.run_id


if __name__ == "__main__":
    sys.exit(main())

