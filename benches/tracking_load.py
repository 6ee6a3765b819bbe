"""The lab's tracking server under a whole cluster's telemetry: PostgreSQL beside SQLite.

Starts `harness tracking serve` as an administrator would (its own home, --store postgres or
sqlite, the default workers), then runs JOBS simulated jobs as separate processes, each sending
a 6-GPU node's telemetry (6 GPUs x 12 metrics, plus 5 host metrics, sampled every second) in one
log_batch every 5 s, as the harness's sender does: one quick try per call, the values kept and
sent again when a call fails.  Meanwhile a reader lists the experiment's runs every 2 s, as the
UI's run list does.  At the end the rows in the store are counted against the rows sent.

Jobs that start at different times flush at different moments: by default the jobs' flushes are
spread evenly over the 5 s (job i starts i x 5/JOBS s after the first).  ``--burst`` starts them
all at once, so every flush of every job arrives in the same instant: the worst case, which the
harness's sender avoids by starting its flush clock at a random point (tracking/mlflow_tracker.py).

    .venv/bin/python benches/tracking_load.py                 # 20 jobs x 60 s, both stores
    .venv/bin/python benches/tracking_load.py --jobs 7 --seconds 30 --stores sqlite
    .venv/bin/python benches/tracking_load.py --stores postgres --burst

Prints, per store: log_batch calls, failed calls, latency p50/p99/max, the run list's latency
p50/p99/max, rows sent and stored.  Wants an otherwise idle machine: the server, PostgreSQL and
every job share its cores.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPUS, GPU_METRICS, HOST_METRICS, FLUSH_S = 6, 12, 5, 5.0


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def job(url: str, experiment_id: str, index: int, seconds: float, start_at: float, out) -> None:
    """One simulated job: its run, then a flush of 5 s of samples every 5 s."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from tracking.mlflow_tracker import send_batch
    client = MlflowClient(url)
    run_id = client.create_run(experiment_id, run_name=f"load-{index}").info.run_id
    names = [f"system/node{index}/gpu_{g}_metric_{m}" for g in range(GPUS)
             for m in range(GPU_METRICS)] + [f"system/node{index}/host_{m}" for m in range(HOST_METRICS)]
    latencies, failures, sent, pending, second, errors = [], 0, 0, [], 0, {}
    while time.time() < start_at:
        time.sleep(0.05)
    began = time.time()
    while time.time() - began < seconds:
        now = int(time.time() * 1000)
        for _ in range(int(FLUSH_S)):  # five one-second samples
            pending += [Metric(n, float(second % 97), now + second, second) for n in names]
            second += 1
        while pending:
            chunk = pending[:1000]
            t0 = time.perf_counter()
            try:
                send_batch(client, run_id, chunk)
            except Exception as e:
                failures += 1
                _note(errors, e)
                break  # kept: sent again with the next flush
            latencies.append(time.perf_counter() - t0)
            sent += len(chunk)
            del pending[:len(chunk)]
        time.sleep(max(0.0, began + second - time.time()))
    deadline = time.time() + 300
    while pending and time.time() < deadline:  # the job's end: what is still waiting
        try:
            send_batch(client, run_id, pending[:1000])
            sent += len(pending[:1000])
            del pending[:1000]
        except Exception as e:
            failures += 1
            _note(errors, e)
            time.sleep(1)
    out.put({"run_id": run_id, "latencies": latencies, "failures": failures, "sent": sent,
             "unsent": len(pending), "errors": errors})


def _note(errors: dict, error: Exception) -> None:
    """Count each kind of failure by its first line."""
    first = (str(error).splitlines() or [type(error).__name__])[0][:160]
    errors[first] = errors.get(first, 0) + 1


def run_list_reader(url: str, experiment_id: str, stop: threading.Event, out: list) -> None:
    """The UI's run list every 2 s; a list that takes over 30 s counts as never answered."""
    import requests
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            requests.post(f"{url}/api/2.0/mlflow/runs/search", timeout=30,
                          json={"experiment_ids": [experiment_id], "max_results": 100}
                          ).raise_for_status()
            out.append(time.perf_counter() - t0)
        except Exception:
            out.append(float("inf"))
        stop.wait(2.0)


def stored_rows(backend: str, run_ids) -> int:
    import sqlalchemy as sa
    engine = sa.create_engine(backend)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM metrics WHERE run_uuid IN :ids")
                            .bindparams(sa.bindparam("ids", expanding=True)),
                            {"ids": list(run_ids)}).scalar()
    engine.dispose()
    return rows


def bench(store: str, jobs: int, seconds: float, burst: bool = False) -> dict:
    from tracking import postgres, server
    home = Path(tempfile.mkdtemp(prefix=f"load-{store}-"))
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HARNESS_TRACKING_HOME=str(home))
    log = open(home / "serve.log", "wb")
    proc = subprocess.Popen([str(ROOT / ".venv/bin/harness"), "tracking", "serve", "--store", store,
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        server.wait_ready(url, proc, timeout_s=300)
        from mlflow import MlflowClient
        experiment = MlflowClient(url).create_experiment("load")
        results, start_at = mp.Queue(), time.time() + 15  # every job's imports done first
        phase = 0.0 if burst else FLUSH_S / jobs
        workers = [mp.Process(target=job, args=(url, experiment, i, seconds, start_at + i * phase,
                                                results), daemon=True) for i in range(jobs)]
        for w in workers:
            w.start()
        reads, stop = [], threading.Event()
        reader = threading.Thread(target=run_list_reader, args=(url, experiment, stop, reads))
        while time.time() < start_at:
            time.sleep(0.1)
        reader.start()
        done = [results.get(timeout=seconds + 600) for _ in workers]
        stop.set()
        reader.join()
        for w in workers:
            w.join()
        backend = (postgres.Cluster(postgres.cluster_root(home)).uri() if store == "postgres"
                   else f"sqlite:///{home / 'mlflow.db'}")
        latencies = [x for d in done for x in d["latencies"]]
        errors: dict = {}
        for d in done:
            for text, n in d["errors"].items():
                errors[text] = errors.get(text, 0) + n
        return {"store": store, "jobs": jobs, "calls": len(latencies),
                "failed": sum(d["failures"] for d in done),
                "p50": _percentile(latencies, 0.5),
                "over_500ms": sum(x > 0.5 for x in latencies), "p99": _percentile(latencies, 0.99),
                "max": max(latencies), "list_p50": _percentile(reads, 0.5),
                "list_p99": _percentile(reads, 0.99), "list_max": max(reads),
                "sent": sum(d["sent"] for d in done), "unsent": sum(d["unsent"] for d in done),
                "errors": errors,
                "stored": stored_rows(backend, [d["run_id"] for d in done])}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a server still draining its backlog
            import signal
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if os.geteuid() == 0:
            import shutil
            shutil.rmtree(postgres.cluster_root(home), ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--burst", action="store_true", help="every job flushes at the same instant")
    args = parser.parse_args()
    rows = []
    for store in args.stores.split(","):
        rows.append(bench(store, args.jobs, args.seconds, args.burst))
        print(f"{store}: {rows[-1]}", flush=True)
    print(f"\n{args.jobs} jobs x {args.seconds:.0f} s{' (flushing in bursts)' if args.burst else ''}, each a 6-GPU node "
          f"({GPUS * GPU_METRICS + HOST_METRICS} metrics/s, one log_batch every {FLUSH_S:.0f} s)")
    print(f"{'store':<9} {'calls':>6} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'list p50':>8} {'list p99':>8} {'list max':>8} {'sent':>8} {'stored':>8}")
    for r in rows:
        print(f"{r['store']:<9} {r['calls']:>6} {r['failed']:>6} {r['p50'] * 1e3:>7.0f} "
              f"{r['p99'] * 1e3:>7.0f} {r['max'] * 1e3:>7.0f} {r['list_p50'] * 1e3:>8.0f} "
              f"{r['list_p99'] * 1e3:>8.0f} {r['list_max'] * 1e3:>8.0f} {r['sent']:>8} "
              f"{r['stored']:>8}")
        for text, n in r["errors"].items():
            print(f"    {r['store']}: {n} x {text}")
        if r["unsent"]:
            print(f"    {r['store']}: {r['unsent']} values never accepted")
    if len(rows) == 2:
        a, b = rows
        print(f"ratios {a['store']}/{b['store']}: log_batch p99 {a['p99'] / b['p99']:.2f}, "
              f"run list p99 {a['list_p99'] / b['list_p99']:.2f}")


if __name__ == "__main__":
    main()
