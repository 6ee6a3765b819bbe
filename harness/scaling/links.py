"""The communication model's links, each from the best source there is.

A sweep's own measurement at a size (the allreduce of the model's gradients, timed in the run)
beats a ``harness probe`` result, which beats the cluster profile's fields (ASSUMPTIONs until
an administrator measures them).  Every figure keeps its source, printed beside the prediction.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from harness.engines import ENGINES
from harness.errors import UserError
from harness.scaling.comm_model import Layout, Links

GB = 1e9


def from_profile(part, label: str) -> dict:
    """{kind: (bandwidth B/s, latency s, source)} for the links the profile states."""
    found = {}
    for kind in ("intra", "inter"):
        bw = getattr(part, f"{kind}_node_GBps")
        if bw > 0:
            found[kind] = (bw * GB, getattr(part, f"{kind}_node_latency_us") * 1e-6,
                           f"profile {label}")
    return found


def from_probe(path: Path) -> dict:
    """The link a `harness probe --out FILE` run measured: one host is intra-node, one process on
    each of several hosts is inter-node.  Bandwidth from the largest message, latency per ring
    step from the smallest."""
    try:
        result = json.loads(Path(path).read_text())
        hosts = [n["host"] for n in result["nodes"]]
        rows = sorted((r for r in result["sweep"] if r["backend"] in ENGINES),
                      key=lambda r: r["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--probe {path}: not a `harness probe --out` result ({type(e).__name__}: "
                        f"{e})") from None
    ranks = len(hosts)
    if ranks < 2 or not rows:
        raise UserError(f"--probe {path}: {ranks} process(es) measured no link; probe with 2 or more")
    if len(set(hosts)) == 1:
        kind = "intra"
    elif len(set(hosts)) == ranks:
        kind = "inter"
    else:
        raise UserError(f"--probe {path}: {ranks} processes on {len(set(hosts))} hosts mix both "
                        "links; probe one node (intra) or one process per node (inter)")
    latency = rows[0]["seconds"] / (2 * (ranks - 1))
    return {kind: (rows[-1]["busbw_GBps"] * GB, latency, f"harness probe {path}")}


def from_sweep(measured: dict[Layout, float]) -> dict:
    """Bus bandwidths (GB/s) the sweep's sizes measured at their layouts.  The gradients' own
    size was timed, so latency is inside the figure already (its latency term is 0)."""
    found = {}
    for layout, busbw in measured.items():
        kind = ("intra" if layout.nodes == 1 and layout.per_node > 1 else
                "inter" if layout.per_node == 1 and layout.nodes > 1 else None)
        if kind and busbw > 0:
            found[kind] = (busbw * GB, 0.0, f"measured by this sweep at N={layout.processes}")
    return found


def needed(nodes: int, gpus_per_node: int) -> tuple:
    """The links a partition's layouts use: none inside 1-GPU nodes, none between 1 node."""
    return tuple(k for k, used in (("intra", gpus_per_node > 1), ("inter", nodes > 1)) if used)


def resolve(profile: dict, probes: list[dict], sweep: Optional[dict] = None,
            kinds: tuple = ("intra", "inter")) -> Links:
    """Each link from the best source; a missing one is a clear error naming what supplies it."""
    best = {k: (float("inf"), 0.0, "not used") for k in ("intra", "inter") if k not in kinds}
    best.update(profile)
    for found in probes:
        best.update(found)
    best.update(sweep or {})
    missing = [k for k in kinds if k not in best]
    if missing:
        raise UserError(
            f"{missing[0]}_node_GBps: unknown for this partition; add it to the cluster profile, "
            f"or pass --probe FILE from `harness probe --out FILE` "
            f"{'on one node' if missing[0] == 'intra' else 'with one process on each of two nodes'}")
    (intra_bw, intra_lat, _), (inter_bw, inter_lat, _) = best["intra"], best["inter"]
    return Links(intra_bw, inter_bw, intra_lat, inter_lat,
                 tuple(f"{k}-node {best[k][0] / GB:.3g} GB/s ({best[k][2]})" for k in kinds))
