"""``harness sweep``: plan and check every point, then run them locally or queue the job array."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Optional

from harness.engines import check_compiled_steps
from harness.errors import UserError
from harness.sweep import objective as ranking
from harness.sweep import plan as planning
from harness.sweep import space as search


@dataclass(frozen=True)
class SweepRequest:
    spec_path: str
    overrides: list
    grid: list = field(default_factory=list)
    ranges: list = field(default_factory=list)
    random_points: Optional[int] = None
    seed: Optional[int] = None
    max_parallel: Optional[int] = None
    local: bool = False
    processes: int = 1  # local: processes per point
    dry_run: bool = False
    cluster: str = ""
    sbatch: dict = field(default_factory=dict)
    objective: str = ""  # NAME:max|min; empty: best_val_loss, lowest


def sweep(req: SweepRequest) -> int:
    if req.max_parallel is not None and not 1 <= req.max_parallel <= search.MAX_POINTS:
        raise UserError(f"--max-parallel {req.max_parallel}: use 1..{search.MAX_POINTS} points at once")
    if not 1 <= req.processes <= 256:
        raise UserError(f"--np {req.processes}: use 1..256 processes per point")
    if req.processes != 1 and not req.local:
        raise UserError(f"--np {req.processes}: goes with --local; on SLURM a point's processes "
                        "are the spec's resources (--nodes, --gpus-per-node)")
    objective = ranking.parse(req.objective)
    space = search.build_space(req.grid, req.ranges, req.random_points, req.seed)
    plan = planning.plan_sweep(req.spec_path, req.overrides, space, objective)  # or exit 2
    refuse_compiled_steps(req, plan)
    return run_locally(req, plan) if req.local else submit_array(req, plan)


def refuse_compiled_steps(req: SweepRequest, plan: planning.Plan) -> None:
    """What a point's engine cannot run on its processes, refused before any run exists (the
    worker would refuse it too, but only after the parent and children were opened)."""
    for p in plan.points:
        t, r = p.spec.training, p.spec.resources
        processes = req.processes if req.local else r.nodes * r.gpus_per_node
        try:
            check_compiled_steps(t.engine, t.steps_per_execution, t.jit_compile, processes)
        except UserError as e:
            raise UserError(f"point {p.index} ({p.name}): {e}") from None


def run_locally(req: SweepRequest, plan: planning.Plan) -> int:
    from harness.group import local
    from harness.sweep import runs, summary
    from harness.telemetry import nvml
    from tracking.run import check_reachable, tracking_uri
    gpus = nvml.device_count()
    at_once = local.parallelism(req.max_parallel or 1, req.processes, gpus)
    planning.print_points(plan)
    if req.dry_run:
        print(f"dry run: nothing run ({len(plan.points)} points, {at_once} at a time, "
              f"{req.processes} process(es) each)", flush=True)
        return 0
    check_reachable(plan.base)
    parent, children = runs.open_runs(plan, "local", {"sweep.max_parallel": at_once,
                                                      "sweep.processes_per_point": req.processes})
    parent.close()
    launch = planning.write_launch(plan, children, parent.run_id, tracking_uri(), "local",
                                   req.processes)
    points_file = plan.folder / "points.json"
    print(f"sweep: parent {parent.location}; launch {launch.path}", flush=True)
    from harness.runtime.prepare import prepare_launch
    prepare_launch(launch)  # once per data section: points side by side would all fill one cache
    try:
        codes = local.run_points(launch, at_once, plan.folder, gpus)
    except KeyboardInterrupt:
        summary.summarize(str(plan.folder), final=False)
        summary.end_parent(points_file, "KILLED")
        raise
    summary.summarize(str(plan.folder), final=True)
    return 0 if any(code == 0 for code in codes.values()) else 1


def submit_array(req: SweepRequest, plan: planning.Plan) -> int:
    from harness.sweep import cluster, runs
    slurm_cluster, uri, script = cluster.check(plan, req.cluster, req.sbatch, req.max_parallel)
    planning.print_points(plan)
    if req.dry_run:
        print(script, end="")
        print("dry run: nothing submitted (SLURM would accept the array)", flush=True)
        return 0
    parent, children = runs.open_runs(plan, "slurm", {"sweep.max_parallel": req.max_parallel or "none"})
    try:
        r = plan.base.resources
        launch = planning.write_launch(plan, children, parent.run_id, uri, "slurm",
                                       r.nodes * r.gpus_per_node, r.nodes)
        points_file = plan.folder / "points.json"
        array_id, summary_id = cluster.submit(plan, slurm_cluster, req.sbatch, req.max_parallel,
                                              launch)
    except BaseException:
        runs.discard(parent, children)  # SLURM refused: nothing half-written stays
        shutil.rmtree(plan.folder, ignore_errors=True)
        raise
    parent.set_tags({"slurm.array_job_id": array_id})
    parent.close()
    n, k = len(plan.points), req.max_parallel
    print(f"submitted job array {array_id}: {n} points{f', at most {k} at once' if k else ''}; "
          f"summary job {summary_id or 'not queued'} runs when they have ended")
    print(f"points:   {points_file}")
    print(f"logs:     {cluster.slurm_log_dir(plan)}/{plan.base.name}-{array_id}_<point>.out")
    print(f"mlflow:   {uri}, experiment {plan.base.experiment!r}")
    print(f"parent:   {parent.location}")
    print(f"follow:   harness status {array_id}")
    print(f"results:  harness sweep --summarize {plan.sweep_id} (any time)")
    return 0
