"""The ``harness`` command.  Its flag set is pinned by tests/test_cli_flags.py.

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback, nothing
written); 1 a run that failed; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 the
terminal closed (SIGHUP).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from harness.errors import UserError, exit_code_of
from harness.engines import DEFAULT as DEFAULT_ENGINE, ENGINES, check_compiled_steps, python_for
from harness.entrypoints import PROBE
from harness.files import JOBS




class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _spec_args(parser) -> None:
    parser.add_argument("spec", help="the job's YAML spec, e.g. jobs/diabetes_mlp.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set training.epochs=3 (repeatable)")


def _profile_arg(parser) -> None:
    parser.add_argument("--profile-steps", metavar="A:B", default=None,
                        help="profile steps A..B (from 1, over the run) on rank 0: TensorFlow's "
                        "profiler, Horovod's timeline and a step trace, as artifacts profile/ "
                        "(overrides training.profile_steps)")


def _slurm_args(parser) -> None:
    _spec_args(parser)
    _profile_arg(parser)
    parser.add_argument("--nodes", type=int, help="overrides resources.nodes")
    parser.add_argument("--gpus-per-node", type=int, help="overrides resources.gpus_per_node")
    parser.add_argument("--partition", help="overrides resources.partition")
    parser.add_argument("--time", help="overrides resources.time (HH:MM:SS or D-HH:MM:SS)")
    parser.add_argument("--cluster", default="",
                        help="cluster profile name or YAML path (default $HARNESS_CLUSTER or lars)")
    _sbatch_arg(parser)


def _sbatch_arg(parser) -> None:
    parser.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra sbatch option, e.g. --sbatch account=physics or "
                        "--sbatch exclusive (repeatable; checked against sbatch's options)")


def _store_args(p) -> None:
    p.add_argument("--store", default=None, metavar="{sqlite,postgres}",
                   help="the tracking home's own store: sqlite (default) or postgres (initialised "
                   "and started under the home)")
    p.add_argument("--backend", default=None, help="another store: sqlite:///PATH or "
                   "postgresql://USER@HOST/DB")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="harness", description="Data-parallel Keras training on "
                           "Horovod, tracked in MLflow, on a workstation or a SLURM cluster.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser)

    p = verbs.add_parser("validate", help="check a spec and print it resolved")
    _spec_args(p)

    p = verbs.add_parser("run", help="train on N local processes")
    _spec_args(p)
    p.add_argument("--np", type=int, default=None,
                   help="processes (default: one per local GPU, or 1 without a GPU)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    _profile_arg(p)

    p = verbs.add_parser("render", help="print the sbatch script for a spec")
    _slurm_args(p)

    p = verbs.add_parser("submit", help="validate, render and sbatch a spec")
    _slurm_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check everything (sbatch --test-only) and print the script; submit nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint an earlier job left in checkpoint.dir")

    p = verbs.add_parser("sweep", help="a hyperparameter sweep: one SLURM job array (or local "
                         "processes), one parent MLflow run with a child run per point")
    p.add_argument("spec", nargs="?", help="the job's YAML spec (not with --summarize)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field for every point (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values to try for one spec field; several --grid: every combination")
    p.add_argument("--random", type=int, default=None, metavar="N",
                   help="draw N points from the --range intervals (crossed with any --grid)")
    p.add_argument("--range", dest="ranges", action="append", default=[],
                   metavar="KEY=LOW:HIGH[:log]", help="an interval for --random; integers if "
                   "both ends are; :log draws evenly in the logarithm (learning rates)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the --random draws (default: a new one, recorded); the same "
                   "seed and ranges give the same points")
    p.add_argument("--max-parallel", type=int, default=None, metavar="K",
                   help="points running at once (SLURM: --array=...%%K; local: default 1)")
    p.add_argument("--objective", default="", metavar="NAME:max|min",
                   help="the metric that ranks the points (default best_val_loss:min); a "
                   "validation figure, never a test_ one")
    p.add_argument("--local", action="store_true", help="run the points as local processes")
    p.add_argument("--np", type=int, default=1, help="with --local: processes per point (default 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the points (and the array's script) and stop; nothing written")
    p.add_argument("--summarize", metavar="ID", default="",
                   help="write a sweep's results table and plots onto its parent run now "
                   "(ID: the sweep id, its folder, or its array's job id)")
    for flag, what in (("--nodes", "resources.nodes"), ("--gpus-per-node", "resources.gpus_per_node")):
        p.add_argument(flag, type=int, help=f"overrides {what}")
    p.add_argument("--partition", help="overrides resources.partition")
    p.add_argument("--time", help="overrides resources.time, per point")
    p.add_argument("--cluster", default="",
                   help="cluster profile name or YAML path (default $HARNESS_CLUSTER or lars)")
    _sbatch_arg(p)

    p = verbs.add_parser("status", help="the harness's SLURM jobs and their latest epoch")
    p.add_argument("job_id", nargs="?", help="one job (default: all jobs submitted from here)")

    p = verbs.add_parser("scale", help="throughput at several sizes: speed-up, efficiency, model")
    p.add_argument("spec", nargs="?", default=str(JOBS / "synthetic.yaml"),
                   help="the job to sweep (default jobs/synthetic.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field (repeatable)")
    p.add_argument("--gpus", default=None, help="sizes to run, e.g. 1,2,4,8 (default)")
    p.add_argument("--layout", default="auto", choices=["auto", "packed", "spread"],
                   help="on SLURM: fill few nodes (packed, auto) or one GPU per node (spread)")
    p.add_argument("--repeats", type=int, default=5, help="timing windows (epochs) per size after "
                   "one warm-up epoch (default 5)")
    p.add_argument("--local", action="store_true", help="local processes instead of SLURM jobs")
    p.add_argument("--partition", help="SLURM partition (default: the spec's or the cluster's)")
    p.add_argument("--cluster", default="", help="cluster profile (default $HARNESS_CLUSTER or lars)")
    p.add_argument("--predict", action="store_true",
                   help="predict throughput and efficiency up to the whole partition, packed and "
                        "spread, with and without fp16 allreduce; checked at every measured size")
    p.add_argument("--step-ms", type=float, default=None,
                   help="with --predict: one process's step time in ms; without --gpus, predict "
                        "without a sweep; with --gpus, the sizes need not include 1")
    p.add_argument("--from-run", default="",
                   help="with --predict: one process's step time from this earlier 1-process "
                        "run (a sweep's N=1 child run, or a `harness run --np 1`)")
    p.add_argument("--probe", dest="probes", action="append", default=[], metavar="FILE",
                   help="with --predict: links measured by `harness probe --out FILE` (repeatable)")
    p.add_argument("--comm-floor-ms", type=float, default=0.0,
                   help="with --predict: the least a distributed step spends beyond its compute, "
                        "as a sweep measured it (default 0, near it on GPU nodes)")
    _sbatch_arg(p)

    p = verbs.add_parser("probe", help="hosts, GPUs, versions, Horovod build, allreduce bandwidth")
    p.add_argument("--np", type=int, default=2, help="local processes (default 2)")
    p.add_argument("--controller", default="gloo", choices=["gloo", "mpi"],
                   help="how horovodrun joins them; mpi also runs the mpi4py sweep")
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES),
                   help="whose allreduce to time: horovod (default) or tf (MultiWorkerMirroredStrategy)")
    p.add_argument("--max-bytes", type=int, default=256 * 2 ** 20,
                   help="largest allreduce in the 1 KB x 4^k sweep (default 256 MB)")
    p.add_argument("--log", action="store_true", help="log the results to MLflow (experiment probe)")
    p.add_argument("--out", default="", help="write the results as JSON (for scale --probe)")

    p = verbs.add_parser("report", help="print a run's summary from MLflow")
    p.add_argument("run_id")

    p = verbs.add_parser("tracking", help="the MLflow tracking server")
    sub = p.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    serve = sub.add_parser("serve", help="start mlflow server with cluster defaults")
    _store_args(serve)
    serve.add_argument("--workers", type=int, default=None,
                       help="server processes (default 1 on SQLite, 4 on PostgreSQL)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--artifacts", default=None, help="artifact directory")
    serve.add_argument("--auth", action="store_true", help="MLflow basic-auth app")
    serve.add_argument("--allow-host", dest="aliases", action="append", default=[], metavar="NAME",
                       help="another name clients use for this machine (a DNS alias, an SSH "
                       "tunnel's name); its own names and addresses are allowed already")
    imp = sub.add_parser("import", help="a fallback file's metrics or a launch's journal into "
                         "MLflow, or an SQLite store into PostgreSQL")
    imp.add_argument("file", help="mlflow-fallback-*.jsonl (into MLFLOW_TRACKING_URI), a journal "
                     "folder (runs/<name>/launches/<digest>/journal-0: into its run), or an "
                     "SQLite store (mlflow.db: into --store postgres or --backend URI)")
    _store_args(imp)
    back = sub.add_parser("backup", help="copy the store and its artifacts while the server runs")
    back.add_argument("dest", help="a new folder")
    _store_args(back)
    back.add_argument("--artifacts", default=None, help="artifact directory (default: the home's)")
    rest = sub.add_parser("restore", help="a backup into an empty store")
    rest.add_argument("src", help="the folder harness tracking backup wrote")
    _store_args(rest)
    rest.add_argument("--artifacts", default=None, help="artifact directory (default: the home's)")
    user = sub.add_parser("add-user", help="create a user on the --auth server (administrator)")
    user.add_argument("username")
    user.add_argument("--url", default="http://127.0.0.1:5000",
                      help="the server (default http://127.0.0.1:5000)")

    p = verbs.add_parser("data", help="shard folders: pack a data set, inspect one")
    sub = p.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    pack = sub.add_parser("pack", help="an .npz, HDF5 file, FITS folder or job's data into shards")
    pack.add_argument("src", help="mnist.npz, data.h5, a folder of FITS cut-outs (one subfolder "
                      "per class), or a job spec (its load_data)")
    pack.add_argument("dest", help="the new shard folder")
    pack.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="with a job spec: override a spec field (repeatable)")
    pack.add_argument("--shard-mb", type=float, default=256.0,
                      help="about this many MB per shard file (default 256)")
    pack.add_argument("--val-fraction", type=float, default=0.1,
                      help="FITS folders: the share of files for validation (default 0.1)")
    pack.add_argument("--test-fraction", type=float, default=0.1,
                      help="FITS folders: the share of files held out for testing (default 0.1)")
    pack.add_argument("--seed", type=int, default=0, help="FITS folders: the split's draw")
    look = sub.add_parser("inspect", help="print a shard folder's manifest and check its files")
    look.add_argument("folder")
    look.add_argument("--full", action="store_true", help="also check every file's SHA-256")
    return parser


def cmd_validate(args) -> int:
    from harness.spec.loader import load_spec
    from harness.spec.schema import describe
    spec = load_spec(args.spec, args.overrides)
    print(yaml.safe_dump(describe(spec), sort_keys=False), end="")
    return 0


def cmd_run(args) -> int:
    from harness.runtime import checkpoint, launcher, launches
    from harness.runtime.prepare import prepare_points
    from harness.spec.manifest import Point
    from harness.telemetry import nvml
    from harness.spec.loader import load_spec
    from tracking.run import launch_uri

    spec = load_spec(args.spec, args.overrides + profile_override(args))
    processes = args.np if args.np is not None else max(1, nvml.device_count())
    if not 1 <= processes <= 256:
        raise UserError(f"--np {processes}: use 1..256 processes")
    t = spec.training
    check_compiled_steps(t.engine, t.steps_per_execution, t.jit_compile, processes)
    state = checkpoint.plan_resume(spec.checkpoint_dir, args.resume)  # refuse to clobber, first
    uri = launch_uri(spec)  # exit 2 now when a required server is unreachable
    # The data once, before the processes start (they all read the cache), and before the run
    # exists: a simulation that fails or is interrupted leaves no run RUNNING.
    prepare_points([Point(0, spec)])
    launch = launches.local(spec, processes, args.resume, state.run_id if state else None,
                            uri=uri)
    return launcher.launch(launch)


def resource_overrides(args) -> list[str]:
    """--nodes/--gpus-per-node/--partition/--time (and --profile-steps) as --set overrides, so
    the spec checks them."""
    pairs = [("nodes", args.nodes), ("gpus_per_node", args.gpus_per_node),
             ("partition", args.partition), ("time", args.time)]
    return [f"resources.{k}={yaml.safe_dump(v, default_style=chr(34)).strip() if isinstance(v, str) else v}"
            for k, v in pairs if v is not None] + profile_override(args)


def profile_override(args) -> list[str]:
    steps = getattr(args, "profile_steps", None)
    return [] if steps is None else [f'training.profile_steps="{steps}"']


def cmd_render(args) -> int:
    from slurm import options as sbatch_options
    from slurm.cluster import load_cluster
    from harness.runtime import launches
    from harness.spec.loader import load_spec
    spec = load_spec(args.spec, args.overrides + resource_overrides(args))
    print(launches.render_batch(spec, load_cluster(args.cluster),
                                sbatch_options.parse_cli(args.sbatch)), end="")
    return 0


def cmd_submit(args) -> int:
    from slurm import options as sbatch_options
    from slurm.cluster import load_cluster
    from harness.runtime import checkpoint, launches
    from harness.spec.loader import load_spec
    from tracking.run import submission_facts
    spec = load_spec(args.spec, args.overrides + resource_overrides(args))
    t, r = spec.training, spec.resources
    check_compiled_steps(t.engine, t.steps_per_execution, t.jit_compile, r.nodes * r.gpus_per_node)
    extra = sbatch_options.parse_cli(args.sbatch)
    uri, estimate = submission_facts(spec)
    cluster = load_cluster(args.cluster)
    state = checkpoint.plan_resume(spec.checkpoint_dir, args.resume)  # never clobber a checkpoint
    launches.submit_batch(spec, cluster, uri, estimate, extra, args.dry_run,
                          run_id=state.run_id if state else None)
    return 0


def cmd_sweep(args) -> int:
    from slurm import options as sbatch_options
    from harness.sweep.command import SweepRequest, sweep
    if args.summarize:
        if args.spec:
            raise UserError("harness sweep --summarize ID takes no spec; it reads the sweep's "
                            "points file")
        from harness.sweep.summary import summarize
        return summarize(args.summarize)
    if not args.spec:
        raise UserError("harness sweep: give the job's spec, e.g. harness sweep "
                        "jobs/diabetes_mlp.yaml --grid training.learning_rate=1e-3,3e-4")
    return sweep(SweepRequest(
        args.spec, args.overrides + resource_overrides(args), args.grid, args.ranges, args.random,
        args.seed, args.max_parallel, args.local, args.np, args.dry_run, args.cluster,
        sbatch_options.parse_cli(args.sbatch), args.objective))


def cmd_status(args) -> int:
    from slurm.status import show
    from tracking.summary import job_link, job_progress, run_progress
    return show(args.job_id, job_progress, point_progress=run_progress, link=job_link)


def cmd_scale(args) -> int:
    from slurm import options as sbatch_options
    from harness.scaling import prediction_run
    from harness.scaling import stats as scaling
    from harness.scaling.sweep import SweepPlan, sweep
    from harness.spec.loader import load_spec
    gpus = args.gpus or "1,2,4,8"
    try:
        sizes = scaling.parse_sizes(gpus)
    except ValueError as e:
        raise UserError(f"--gpus {gpus!r}: {str(e)!r} is not a positive integer; "
                        "use a list like 1,2,4,8") from None
    if args.local and max(sizes) > 64:
        raise UserError(f"--gpus {gpus}: at most 64 local processes")
    if not 2 <= args.repeats <= 1000:
        raise UserError(f"--repeats {args.repeats}: use 2..1000 timing windows (a CI needs two)")
    overrides = args.overrides + ([f"resources.partition={args.partition}"] if args.partition else [])
    given_step = args.step_ms is not None or bool(args.from_run)
    if (given_step or args.probes or args.comm_floor_ms) and not args.predict:
        raise UserError("--step-ms, --from-run, --probe and --comm-floor-ms go with --predict")
    if given_step and args.gpus is None:  # nothing to measure: the forecast alone
        return prediction_run.standalone(load_spec(args.spec, overrides), args.cluster,
                                         args.step_ms, args.from_run, args.probes, args.comm_floor_ms)
    one_step_s, source = (prediction_run.one_step(load_spec(args.spec, overrides), args.step_ms,
                                                  args.from_run) if given_step else (None, ""))
    layout = "packed" if args.layout == "auto" else args.layout
    extra = sbatch_options.parse_cli(args.sbatch)
    return sweep(SweepPlan(args.spec, overrides, sizes, args.repeats, args.local, layout,
                           args.cluster, extra, args.predict, one_step_s, source,
                           tuple(args.probes), args.comm_floor_ms))


def cmd_probe(args) -> int:
    from harness.runtime import launcher
    from harness.scaling.probe import DEFAULT_SIZES
    if not 1 <= args.np <= 256:
        raise UserError(f"--np {args.np}: use 1..256 processes")
    sizes = [b for b in DEFAULT_SIZES if b <= args.max_bytes]
    if not sizes:
        raise UserError(f"--max-bytes {args.max_bytes}: the smallest allreduce is 1024 bytes")
    worker = [python_for(args.engine), "-m", PROBE, "--sizes", ",".join(map(str, sizes)),
              "--engine", args.engine]
    if args.out:
        worker += ["--out", str(Path(args.out).resolve())]
    # Not "--log": horovodrun would take it for its own --log-level.
    return launcher.run_processes(args.np, worker + (["--mlflow"] if args.log else []),
                                  args.controller, engine=args.engine)


def cmd_report(args) -> int:
    from tracking.summary import print_report
    return print_report(args.run_id)


def cmd_tracking(args) -> int:
    from tracking import commands
    return commands.run(args)


def cmd_data(args) -> int:
    from harness.data import pack
    if args.action == "inspect":
        return pack.inspect(args.folder, args.full)
    return pack.main(args.src, args.dest, args.overrides, args.shard_mb, args.val_fraction,
                     args.test_fraction, args.seed)


COMMANDS = {"validate": cmd_validate, "run": cmd_run, "render": cmd_render, "submit": cmd_submit,
            "sweep": cmd_sweep, "status": cmd_status, "scale": cmd_scale, "probe": cmd_probe, "report": cmd_report,
            "tracking": cmd_tracking, "data": cmd_data}


def main(argv=None) -> int:
    def dispatch() -> int:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.verb](args)
    return exit_code_of(dispatch)


if __name__ == "__main__":
    sys.exit(main())
