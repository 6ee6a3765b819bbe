"""A sweep's points as full specs: every one validated before anything is written or queued.

The sweep's folder holds one launch manifest (``launch.json``) with every point's resolved spec
(the base spec, the ``--set`` overrides, the point's values and a checkpoint folder of its own)
and child run, so a requeued array task trains exactly what was submitted even if the YAML is
edited meanwhile; ``points.json`` beside it is the sweep's own record for its summary.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.spec import manifest as launch_manifest, sweep_points
from harness.spec.loader import load_spec
from harness.spec.schema import JobSpec, describe, flatten
from harness.sweep import space as search
from harness.sweep.objective import Objective


@dataclass(frozen=True)
class Point:
    index: int
    values: dict  # dotted key -> value
    name: str  # lr=0.0003,dropout=0.5
    spec: JobSpec  # validated, with its own checkpoint folder


@dataclass(frozen=True)
class Plan:
    sweep_id: str
    folder: Path  # runs/<name>/sweeps/<sweep id>, absolute
    base: JobSpec  # the spec without any point's values: resources, experiment, engine
    space: search.Space
    points: tuple  # Point
    objective: Objective = Objective()  # what ranks the points

    @property
    def varied(self) -> list[str]:
        return self.space.varied


def new_sweep_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_sweep(spec_path: str, overrides: list[str], space: search.Space,
               objective: Objective = Objective()) -> Plan:
    """Every point loaded and checked as the full spec it will train; one bad value refuses all."""
    base = load_spec(spec_path, overrides)
    sweep_id = new_sweep_id(base.name)
    folder = (Path.cwd() / "runs" / base.name / "sweeps" / sweep_id).resolve()
    values = search.points(space)
    names = search.short_names(space.varied)
    planned = []
    for index, point in enumerate(values):
        name = search.point_name(point, names)
        checkpoints = folder / f"point-{index}" / "checkpoints"
        try:
            spec = load_spec(spec_path, overrides + search.overrides(point) +
                             [f"checkpoint.dir={checkpoints}"])
        except UserError as e:
            raise UserError(f"point {index} ({name}): {e}") from None
        planned.append(Point(index, point, name, spec))
    return Plan(sweep_id, folder, base, space, tuple(planned), objective)


def varied_params(point: Point) -> dict:
    """The point's values as the run's ``spec.*`` parameters (the names and the text every run
    of the harness logs them with): the UI compares the children by them."""
    flat = flatten(describe(point.spec))
    return {f"spec.{k}": flat[k] for k in point.values if k in flat}


def print_points(plan: Plan) -> None:
    print(f"sweep {plan.sweep_id}: {len(plan.points)} point(s) of {plan.base.name}; "
          f"{plan.space.describe()}", flush=True)
    width = len(str(len(plan.points) - 1))
    for p in plan.points:
        print(f"  {p.index:>{width}}  {p.name}", flush=True)


def launch(plan: Plan, run_ids: dict, parent_run_id: str, uri: str, processes: int,
           nodes: int = 1) -> launch_manifest.Manifest:
    """The launch manifest every point trains from, not yet written (run ids may be None while
    a SLURM sweep is only checked)."""
    points = [launch_manifest.Point(p.index, p.spec, run_ids.get(p.index), p.name, p.values)
              for p in plan.points]
    return launch_manifest.new(
        "sweep", points, launch_manifest.Layout(processes, nodes), uri, True,
        {"kind": "sweep", "id": plan.sweep_id, "parent_run_id": parent_run_id})


def write_launch(plan: Plan, run_ids: dict, parent_run_id: str, uri: str, where: str,
                 processes: int, nodes: int = 1) -> launch_manifest.Manifest:
    """The launch manifest every point trains from (returned, written), and the points file the
    summary reads."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    written = launch_manifest.write(launch(plan, run_ids, parent_run_id, uri, processes, nodes),
                                    plan.folder)
    entries = [{"index": p.index, "name": p.name, "values": p.values, "run_id": run_ids[p.index],
                "checkpoint_dir": str(p.spec.checkpoint_dir)} for p in plan.points]
    sweep_points.write(plan.folder, {
        "sweep_id": plan.sweep_id, "name": plan.base.name, "experiment": plan.base.experiment,
        "parent_run_id": parent_run_id, "tracking_uri": uri, "space": plan.space.describe(),
        "seed": plan.space.seed, "varied": plan.varied, "manifest": str(written.path),
        "log_scale": [r.key for r in plan.space.ranges if r.log], "epochs": plan.base.training.epochs,
        "objective": plan.objective.describe(),
        "where": where, "processes": processes, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "points": entries})
    return written
