#!/usr/bin/env python3
"""How close `harness scale --predict` comes on two nodes, unshaped and shaped to 1 Gbit/s and 100 Mbit/s.

    sudo .venv/bin/python benches/prediction_two_nodes.py [--rounds 2] [--model gpu_standin]

Starts the two-node namespace cluster (slurm/dev/two_nodes.sh) and an MLflow server, measures
the 1-process step and the communication floor once (a sweep of 1 and 2 processes, unshaped),
then in each round measures N=2 on every link against them, the links shaped in alternation so a drift of the machine
hits each alike.  Prints measured and predicted efficiency, their error in points, and per link
the mean error and its spread.  Needs root (network namespaces, tc).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.files import REPO

TWO_NODES = REPO / "slurm" / "dev" / "two_nodes.sh"
STATE = Path(os.environ.get("HARNESS_SLURM_2N", "/tmp/lars-slurm-2n"))
LINKS = ("", "1gbit", "100mbit")
VALIDATE = re.compile(r"validate: N=2 \(2 nodes x 1\): measured (\d+)%.*, predicted (\d+)%")


def shape(rate: str) -> None:
    for node in ("lhn1", "lhn2"):
        tc = ["ip", "netns", "exec", node, "tc", "qdisc"]
        subprocess.run(tc + ["del", "dev", "eth0", "root"], capture_output=True)
        if rate:
            subprocess.run(tc + ["add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb",
                                 "latency", "100ms"], check=True)


def sweep(env: dict, workdir: str, model: str, sizes: str, *extra) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "scale", str(REPO / "jobs" / "synthetic.yaml"),
         "--gpus", sizes, "--layout", "spread", "--repeats", "3", "--predict",
         "--set", f"data.model={model}", "--set", "data.samples_per_epoch=4096", *extra],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="gpu_standin", help="gpu_standin or small_cnn")
    args = parser.parse_args()
    subprocess.run(["bash", str(TWO_NODES), "start"], check=True, capture_output=True)
    sys.path.insert(0, str(REPO / "tests"))
    from mlflow_server import MlflowServer
    errors: dict[str, list] = {link or "unshaped": [] for link in LINKS}
    with tempfile.TemporaryDirectory() as workdir:
        server = MlflowServer(Path(workdir) / "mlflow", host="0.0.0.0",
                              name=socket.gethostname()).start()
        env = dict(os.environ, SLURM_CONF=str(STATE / "slurm.conf"),
                   HARNESS_CLUSTER=str(STATE / "cluster.yaml"), MLFLOW_TRACKING_URI=server.url)
        try:
            shape("")
            first = sweep(env, workdir, args.model, "1,2")
            # The floor this machine's runtime shows unshaped (Horovod's negotiation and rank 0's
            # tracking and telemetry threads on a 1-core node): held for the later rounds.
            floor = re.search(r"comm floor: N=2: ([\d.]+) ms", first)
            floor_ms = floor.group(1) if floor else "0"
            print(f"calibration: {VALIDATE.search(first).group(0)}; comm floor {floor_ms} ms",
                  flush=True)
            parent = re.search(r"scale: parent run (\w+) with", first).group(1)
            from mlflow import MlflowClient
            client = MlflowClient(server.url)
            one, = client.search_runs([client.get_run(parent).info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent}' and "
                                      "tags.`scale.processes` = '1'")
            for round_ in range(args.rounds):
                for link in LINKS:
                    shape(link)
                    out = sweep(env, workdir, args.model, "2", "--from-run", one.info.run_id,
                                "--comm-floor-ms", floor_ms)
                    measured, predicted = map(int, VALIDATE.search(out).groups())
                    errors[link or "unshaped"].append(measured - predicted)
                    print(f"round {round_ + 1} {link or 'unshaped':>8}: measured {measured}%, "
                          f"predicted {predicted}%, error {measured - predicted:+d} points",
                          flush=True)
        finally:
            shape("")
            server.stop()
            subprocess.run(["bash", str(TWO_NODES), "stop"], capture_output=True)
    for link, found in errors.items():
        spread = statistics.stdev(found) if len(found) > 1 else float("nan")
        print(f"{link:>8}: mean error {statistics.mean(found):+.1f} points, sd {spread:.1f} "
              f"over {len(found)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
