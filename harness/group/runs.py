"""A group in MLflow: one parent run, one child run per point, created before any point trains.

Creating the children up front gives every point its run id in the manifest (a requeued task
logs into the same child), lets the UI show the whole group from the start, and marks the
points that have not started as SCHEDULED rather than RUNNING.  A sweep tags its runs
``sweep.id``, a scaling run ``scale.id``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

KINDS = {"sweep": "hyperparameter-sweep", "scale": "scale-sweep"}  # the parent's harness.kind


@dataclass(frozen=True)
class Child:
    index: int
    name: str
    tags: Mapping = field(default_factory=dict)
    params: Mapping = field(default_factory=dict)


def open_group(kind: str, group_id: str, experiment: str, title: str, source: str,
               params: Mapping, children: Sequence[Child], artifacts: Sequence = ()):
    """(parent tracker, {point index: child run id}); the parent holds ``params`` and
    ``artifacts`` (files), the children their tags and parameters, SCHEDULED."""
    from tracking import store_template
    from tracking.run import start_run, tracking_uri
    from tracking.runs import RunStore
    store_template.seed(tracking_uri())  # a new local store: a copy, not MLflow's migrations
    tag = f"{kind}.id"
    parent = start_run(experiment, title, {tag: group_id, "harness.kind": KINDS[kind]}, source)
    parent.log_params(dict(params))
    for path in artifacts:
        parent.log_artifact(path)
    store = RunStore(tracking_uri())
    run_ids = {c.index: store.create(experiment, c.name, {tag: group_id, **dict(c.tags)},
                                     parent.run_id, c.params, status="SCHEDULED")
               for c in children}
    return parent, run_ids


def discard(parent, run_ids: Mapping) -> None:
    """SLURM refused the group: its runs describe nothing that will happen."""
    from tracking.runs import RunStore
    parent.close()
    RunStore(parent.uri).delete_runs([parent.run_id, *run_ids.values()])
