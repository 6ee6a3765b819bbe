"""A sweep in MLflow: one parent run, one child run per point, created before any point trains.

Creating the children up front gives every point its run id in the points file (a requeued
task logs into the same child), lets the UI show the whole sweep from the start, and marks the
points that have not started as SCHEDULED rather than RUNNING.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from harness.spec.schema import describe
from harness.sweep.plan import Plan, varied_params

KIND = "hyperparameter-sweep"


def open_runs(plan: Plan, where: str, extra_params: dict):
    """(parent tracker, {point index: child run id}); the parent holds spec, space, points, seed."""
    from tracking import store_template
    from tracking.run import start_run, tracking_uri
    from tracking.runs import RunStore
    store_template.seed(tracking_uri())  # a new local store: a copy, not MLflow's migrations
    base = plan.base
    parent = start_run(base.experiment, f"sweep {base.name} ({len(plan.points)} points)",
                       {"sweep.id": plan.sweep_id, "harness.kind": KIND}, base.spec_path)
    parent.log_params({"sweep.spec": base.spec_path, "sweep.space": plan.space.describe(),
                       "sweep.points": len(plan.points), "sweep.varied": ",".join(plan.varied),
                       "sweep.seed": plan.space.seed if plan.space.seed is not None else "none",
                       "sweep.where": where, **extra_params})
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.resolved.yaml"
        spec_file.write_text(yaml.safe_dump(describe(base), sort_keys=False))
        points_file = Path(tmp) / "points.json"
        points_file.write_text(json.dumps([{"index": p.index, "name": p.name, "values": p.values}
                                           for p in plan.points], indent=1))
        parent.log_artifact(spec_file)
        parent.log_artifact(points_file)
    store = RunStore(tracking_uri())
    children = {}
    for p in plan.points:
        tags = {"sweep.id": plan.sweep_id, "sweep.point": str(p.index)}
        if where == "slurm":
            tags["slurm.array_task_id"] = str(p.index)
        # SCHEDULED: RUNNING once its task starts.
        children[p.index] = store.create(base.experiment, p.name, tags, parent.run_id,
                                         varied_params(p), status="SCHEDULED")
    return parent, children


def discard(parent, children: dict) -> None:
    """SLURM refused the array: the runs describe nothing that will happen."""
    from tracking.runs import RunStore
    parent.close()
    RunStore(parent.uri).delete_runs([parent.run_id, *children.values()])
