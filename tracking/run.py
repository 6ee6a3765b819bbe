"""Opening (or re-opening) a job's MLflow run and recording what a physicist needs to review it."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional

import yaml

from harness.errors import UserError
from harness.spec.schema import JobSpec, describe, flatten
from tracking import provenance
from tracking.journal import JOURNAL_ENV
from tracking.tracker import NullTracker


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite file in the working directory (never ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def reading_client(what: str):
    """A client for reading runs back; a local SQLite file that does not exist is an error naming
    ``what`` (opening it would create an empty database, and MLflow would log its migrations)."""
    from tracking.mlflow_tracker import MlflowClient
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"{what}: not found: no tracking database {uri.removeprefix('sqlite:///')}; "
                        "set MLFLOW_TRACKING_URI to the server or file that holds it")
    return MlflowClient(uri)


def check_reachable(spec: JobSpec) -> bool:
    """False (or exit 2 when tracking is required) if the tracking server cannot be reached."""
    uri = tracking_uri()
    if not spec.tracking.enabled or not uri.startswith(("http://", "https://")):
        return True
    from tracking.auth import check_credentials_file
    from tracking.mlflow_tracker import MlflowClient, ping
    check_credentials_file()
    try:
        ping(MlflowClient(uri))
        return True
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        if "401" in first or "Unauthorized" in first or "403" in first:
            raise UserError(f"MLFLOW_TRACKING_URI={uri}: the tracking server refused this user "
                            f"({first}); put your user name and password in ~/.mlflow/credentials "
                            "(mode 600; README: Tracking for a lab)") from None
        if spec.tracking.required:
            raise UserError(f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({first}); "
                            "start it (harness tracking serve), fix the URI, or set "
                            "tracking.required=false to train without tracking") from None
        print(f"tracking: {uri} unreachable ({first}); training without tracking "
              "(tracking.required=false)", flush=True)
        return False


def earlier_epoch_seconds(spec: JobSpec, uri: str) -> Optional[tuple[float, str]]:
    """(seconds per epoch, run id) from the latest earlier run of this experiment, if any."""
    if not spec.tracking.enabled:
        return None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None  # no earlier run, and opening it would create the database
    try:
        from tracking.mlflow_tracker import MlflowClient
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(spec.experiment)
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], "metrics.`time/epoch_s` > 0",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    except Exception:  # an estimate only: an unreachable server is reported by check_reachable
        return None
    if not runs:
        return None
    return runs[0].data.metrics["time/epoch_s"], runs[0].info.run_id


def submission_facts(spec: JobSpec) -> tuple[str, Optional[tuple[float, str]]]:
    """What `harness submit` needs from tracking: the URI the job will log to (exit 2 when it is
    required and unreachable) and an earlier run's seconds per epoch."""
    check_reachable(spec)
    uri = tracking_uri()
    return uri, earlier_epoch_seconds(spec, uri)


def open_tracker(spec: JobSpec, ctx, resume_state, derived: Mapping = (),
                 run_id: Optional[str] = None) -> object:
    """Rank 0 gets the run's tracker; every other rank the do-nothing twin.

    ``run_id`` is the run the launch created (None: create one here, for a script sbatch-ed by
    hand).  ``derived`` holds parameters the runtime computes (the scaled learning rate), passed
    in so that tracking never imports the runtime.
    """
    if not ctx.is_chief or not spec.tracking.enabled:
        return NullTracker()
    if run_id is None and not check_reachable(spec):  # a launch's run was checked at launch
        return NullTracker()
    from tracking import store_template

    store_template.seed(tracking_uri())
    already = {}
    if run_id:
        already = reopen_run(run_id)
    else:
        # No run from the launch (a script sbatch-ed by hand): create it here.
        run_id = create_job_run(spec, "JOB" if ctx.slurm.in_step else "LOCAL",
                                tags=ctx.slurm.tags())
    tracker = attach(run_id, spec.checkpoint_dir.parent / f"mlflow-fallback-{run_id}.jsonl",
                     already)
    record_start(tracker, spec, ctx, resume_state, dict(derived))
    return tracker


def reopen_run(run_id: str) -> dict:
    """A run the launch made (or an earlier attempt trained) is RUNNING again, an earlier
    attempt's failure forgotten; {metric key: the last step it holds} (those are not logged
    twice)."""
    from tracking.mlflow_tracker import MlflowClient, last_logged_steps
    client = MlflowClient(tracking_uri())
    already = last_logged_steps(client, run_id)
    client.update_run(run_id, status="RUNNING")
    _forget_failure(client, run_id)
    return already


def open_tracker_in_background(spec: JobSpec, ctx, resume_state, derived: Mapping = (),
                               run_id: Optional[str] = None, enabled: bool = True,
                               run_to_come: Optional[Callable[[], str]] = None) -> object:
    """``open_tracker`` on a thread (rank 0): training starts while the run opens; see
    tracking/deferred.py.  ``enabled`` False: the launch decided to train without tracking.
    ``run_to_come``: waits for the id of the run the launcher is creating."""
    if not ctx.is_chief or not spec.tracking.enabled or not enabled:
        return NullTracker()
    journal = os.environ.get(JOURNAL_ENV)
    if journal:  # a local launch: its launcher ships the calls (tracking/journal.py)
        from tracking.journal import JournalTracker
        tracker = JournalTracker(Path(journal), run_id, run_to_come)
        # git and the package list take a few tenths of a second: not before the first step
        tracker.in_background(lambda: record_start(tracker, spec, ctx, resume_state,
                                                   dict(derived)))
        return tracker
    from tracking.deferred import DeferredTracker

    def open_run():
        return open_tracker(spec, ctx, resume_state, derived, run_id or (
            run_to_come() if run_to_come else None))
    return DeferredTracker(open_run, run_id=run_id, run_id_of=run_to_come)


def launch_uri(spec: JobSpec) -> str:
    """Where a launch's runs go: the tracking URI, or "" when this job trains without tracking
    (switched off, or the server is unreachable and tracking.required is false)."""
    if not spec.tracking.enabled or not check_reachable(spec):
        return ""
    return tracking_uri()


def create_job_run(spec: JobSpec, kind: str = "LOCAL", status: str = "RUNNING",
                   tags: Mapping = (), parent_run_id: Optional[str] = None) -> str:
    """The run of one job, created before its processes start (its id goes into the manifest).

    ``status`` SCHEDULED for a job that waits in SLURM's queue; rank 0 sets RUNNING when it
    starts."""
    from tracking import store_template
    from tracking.mlflow_tracker import MlflowClient
    store_template.seed(tracking_uri())  # a new local store: a copy, not MLflow's migrations
    client = MlflowClient(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or spec.experiment
    try:
        run_id = create_run(client, name, spec.name,
                            {"harness.job": spec.job, **source_tags(spec.spec_path, kind),
                             **dict(tags)}, parent_run_id)
    except Exception as e:
        if "PERMISSION_DENIED" not in str(getattr(e, "error_code", "")) + str(e)[:300]:
            raise
        from tracking.auth import tracking_user
        raise UserError(f"experiment {name!r} at {tracking_uri()}: user {tracking_user()!r} may "
                        "read it but not write to it; ask its owner for EDIT permission or use "
                        "your own experiment (tracking.experiment, MLFLOW_EXPERIMENT_NAME)") from None
    if status != "RUNNING":
        client.update_run(run_id, status=status)
    return run_id


def tag_run(run_id: str, tags: Mapping) -> None:
    """Tags on a run from outside the job (the SLURM job id once sbatch has given it)."""
    from tracking.mlflow_tracker import MlflowClient
    from mlflow.entities import RunTag
    MlflowClient(tracking_uri()).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def run_status(run_id: str) -> Optional[str]:
    """A run's status at the tracking URI, None when it is gone or cannot be read."""
    from tracking.mlflow_tracker import MlflowClient
    try:
        return MlflowClient(tracking_uri()).get_run(run_id).info.status
    except Exception:
        return None


def mark_failed(run_id: str, uri: str, reason: str, rank: Optional[int] = None) -> None:
    """The launcher's word on a failed job: the first failure, which rank, where, how.

    When another rank died first, rank 0's own reason (often a collective that lost its peer)
    moves to ``failure_reason.rank0``; when rank 0 itself failed first and said why, its reason
    stays and the launcher's sentence goes to ``failure_first_rank``.
    """
    from tracking.mlflow_tracker import MlflowClient
    try:
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        own = run.data.tags.get("failure_reason")
        if own and rank in (0, None):
            client.set_tag(run_id, "failure_first_rank", reason)
        else:
            if own:
                client.set_tag(run_id, "failure_reason.rank0", own)
            client.set_tag(run_id, "failure_reason", reason)
        # Rank 0 may have marked the run KILLED (horovodrun stopped it) or died itself (RUNNING):
        # either way the job failed, and every rank has exited by now.
        if run.info.status != "FAILED":
            client.set_terminated(run_id, "FAILED")
    except Exception as e:  # the run's record only: the failure itself is already reported
        print(f"tracking: could not record the failure in run {run_id} ({type(e).__name__})",
              file=sys.stderr, flush=True)


def _forget_failure(client, run_id: str) -> None:
    """A resumed run is running again: the last attempt's reason no longer applies."""
    if "failure_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "failure_reason")


# MLflow 3's UI shows experiments of this kind as model training, not GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str) -> str:
    """The experiment's id; one the harness creates is tagged as model training."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, tags=EXPERIMENT_KIND)


def source_tags(source: str, kind: str = "LOCAL") -> dict:
    """MLflow's standard tags: who ran what, from which commit (the UI's Source and User)."""
    tags = {"mlflow.user": provenance.user(), "mlflow.source.name": source,
            "mlflow.source.type": kind}
    commit = provenance.git_state(Path(source).parent if Path(source).exists() else Path.cwd())
    if commit.get("git.commit", "none") not in ("none", "unknown"):
        tags["mlflow.source.git.commit"] = commit["git.commit"]
    return tags


def create_run(client, experiment: str, run_name: str, tags: Mapping,
               parent_run_id: Optional[str] = None) -> str:
    """A new run (a child of ``parent_run_id`` when given); its id."""
    tags = {"mlflow.runName": run_name, **tags}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id(client, experiment), run_name=run_name,
                             tags=tags).info.run_id


def attach(run_id: str, fallback: Path, already_logged: Optional[dict] = None):
    """A tracker writing into an existing run (rank 0's job run, another node's telemetry)."""
    from tracking.mlflow_tracker import MlflowClient, MlflowTracker
    uri = tracking_uri()
    return MlflowTracker(MlflowClient(uri), run_id, uri, fallback, already_logged)


def start_run(experiment: str, run_name: str, tags: Mapping = (), source: str = "",
              parent_run_id: Optional[str] = None):
    """A new run and its tracker: the scaling sweep's parent, `harness probe --log`."""
    from tracking.mlflow_tracker import MlflowClient
    tags = {**source_tags(source or " ".join(sys.argv)), **dict(tags)}
    run_id = create_run(MlflowClient(tracking_uri()), experiment, run_name, tags, parent_run_id)
    return attach(run_id, Path("runs") / f"mlflow-fallback-{run_id}.jsonl")


def run_params(spec: JobSpec, ctx) -> dict:
    t = spec.training
    params = {f"spec.{k}": v for k, v in flatten(describe(spec)).items()}
    params.update({
        "engine": t.engine, "processes": ctx.size, "batch_size.per_process": t.batch_size,
        "batch_size.global": t.batch_size * ctx.size,
        "lr.rule": t.lr_scaling,
        "hosts": ",".join(ctx.hosts),
        "device": ctx.device,
    })
    params.update(provenance.versions())
    params.update(provenance.git_state(Path(spec.spec_path).parent))
    return params


def record_start(tracker, spec: JobSpec, ctx, resume_state, derived: dict) -> None:
    """What a run records when its training starts: parameters, tags, the resolved spec and
    the package list; a resumed run's checkpointed epochs its curves may lack."""
    tracker.log_params({**run_params(spec, ctx), **derived})
    tags = dict(ctx.slurm.tags())
    if resume_state is not None:
        tags["resumed_from_epoch"] = resume_state.epoch
        tags["slurm.restart_count"] = ctx.slurm.restart_count
    if tags:
        tracker.set_tags(tags)
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.resolved.yaml"
        spec_file.write_text(yaml.safe_dump(describe(spec), sort_keys=False))
        freeze = Path(tmp) / "pip-freeze.txt"
        freeze.write_text(provenance.pip_freeze())
        tracker.log_artifact(spec_file)
        tracker.log_artifact(freeze)
        script = os.environ.get("HARNESS_SBATCH_SCRIPT")
        if script and Path(script).is_file():
            tracker.log_artifact(script)
    if resume_state is not None:  # epochs checkpointed before a crash whose metrics never left
        for entry in resume_state.history:
            tracker.log_metrics({k: v for k, v in entry.items() if k != "epoch"},
                                step=entry["epoch"])
