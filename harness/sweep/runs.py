"""A sweep in MLflow: the group's parent run (search space, points, seed) and a child per point
whose parameters are the point's values (harness/group/runs.py does the creating)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from harness.group.runs import Child, discard, open_group  # noqa: F401  (discard: the sweep's)
from harness.spec.schema import describe
from harness.sweep.plan import Plan, varied_params


def open_runs(plan: Plan, where: str, extra_params: dict):
    """(parent tracker, {point index: child run id}); the parent holds spec, space, points, seed."""
    base = plan.base
    params = {"sweep.spec": base.spec_path, "sweep.space": plan.space.describe(),
              "sweep.points": len(plan.points), "sweep.varied": ",".join(plan.varied),
              "sweep.seed": plan.space.seed if plan.space.seed is not None else "none",
              "sweep.where": where, **extra_params}
    children = [Child(p.index, p.name, {"sweep.point": str(p.index),
                                        **({"slurm.array_task_id": str(p.index)}
                                           if where == "slurm" else {})}, varied_params(p))
                for p in plan.points]
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.resolved.yaml"
        spec_file.write_text(yaml.safe_dump(describe(base), sort_keys=False))
        points_file = Path(tmp) / "points.json"
        points_file.write_text(json.dumps([{"index": p.index, "name": p.name, "values": p.values}
                                           for p in plan.points], indent=1))
        return open_group("sweep", plan.sweep_id, base.experiment,
                          f"sweep {base.name} ({len(plan.points)} points)", base.spec_path,
                          params, children, [spec_file, points_file])
