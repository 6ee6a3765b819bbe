"""``data.stage: node-local``: each node's shards copied once to its own disk before training.

A survey set on the cluster's shared file system is read again every epoch by every rank; on a
busy parallel file system that read is what starves the GPUs.  Staged, each node first copies
the files its own ranks read: every rank copies its own training files (they are disjoint, so
no file is copied twice on a node, and the copies run in parallel), and the node's lowest rank
copies the validation split (every rank reads all of it) and, on rank 0's node, the test split
that ``evaluate`` reads.  Then every epoch reads the local disk.

- **Where.** ``$SLURM_TMPDIR`` when the site sets it, else ``$TMPDIR`` (SLURM sites usually
  point it at the job's local scratch), else the system's temporary folder.
- **Room first.** Every rank computes its node's whole need from the manifest and the free
  space of that disk before anything is copied; a node without room fails the job with one
  line saying how much is needed and free (exit 2), on every rank alike.
- **Nothing half-copied is read.** A file is copied to ``NAME.partial``, its SHA-256 computed
  on the way and compared with the manifest, then renamed.
- **Removed at the end**, however the run ends (finished, failed, preempted); only a SIGKILL
  leaves the copies to the site's clean-up of the job's scratch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from harness.data import shards as fmt
from harness.errors import RunFailed, UserError

COPY_CHUNK = 8 << 20
ROOT_VARIABLES = ("SLURM_TMPDIR", "TMPDIR")


def stage_root(env: Mapping[str, str] = os.environ) -> tuple[Path, str]:
    """The node's local scratch and what named it (for the error a user reads)."""
    for name in ROOT_VARIABLES:
        if env.get(name):
            return Path(env[name]), f"${name}"
    return Path(tempfile.gettempdir()), "the system temporary folder"


@dataclasses.dataclass(frozen=True)
class NodePlan:
    mine: tuple  # the files this rank copies (ShardFile)
    node: tuple  # every file this node needs
    host: str


def plan(shards: fmt.ShardSet, train_files_of: Callable[[int], Sequence], hosts: Sequence[str],
         rank: int, every_node: Sequence[str], chief_node: Sequence[str] = ()) -> NodePlan:
    """What this rank copies and what its node needs in all: ``hosts[r]`` is rank r's host;
    every node reads the splits ``every_node``, rank 0's node also ``chief_node``."""
    host = hosts[rank]
    on_node = [r for r, h in enumerate(hosts) if h == host]
    splits = list(every_node) + (list(chief_node) if host == hosts[0] else [])
    evaluation = tuple(f for split in splits for f in shards.split(split))
    leader = rank == on_node[0]
    mine = tuple(train_files_of(rank)) + (evaluation if leader else ())
    node = tuple(f for r in on_node for f in train_files_of(r)) + evaluation
    return NodePlan(mine, node, host)


def room_error(node_plan: NodePlan, root: Path, named_by: str) -> str:
    """Empty when the node's disk can take its files; else the one line to fail with."""
    need = sum(f.bytes for f in node_plan.node)
    try:
        free = shutil.disk_usage(root).free
    except OSError as e:
        return f"data.stage=node-local: cannot use {named_by} ({root}): {e.strerror}"
    if need <= free:
        return ""
    return (f"data.stage=node-local: node {node_plan.host} needs {_size(need)} for "
            f"{len(node_plan.node)} file(s) in {named_by} ({root}) but only {_size(free)} is free; "
            "ask SLURM for nodes with more local disk (resources.sbatch: {tmp: ...}) or more "
            "nodes, or remove data.stage to read the shared folder in place")


def copy_verified(source: Path, target: Path, sha256: str) -> None:
    """``source`` to ``target`` through ``target.partial``, checking its SHA-256 on the way."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(partial, "wb") as dst:
        while block := src.read(COPY_CHUNK):
            digest.update(block)
            dst.write(block)
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise RunFailed(f"{source}: its copy to {target.parent} has SHA-256 "
                        f"{digest.hexdigest()[:16]}..., the manifest says {sha256[:16]}...: the "
                        "file changed after packing, or the read was bad")
    os.replace(partial, target)


def _copy_all(shards: fmt.ShardSet, files: Sequence, folder: Path) -> str:
    """Copy this rank's files; the error line, or empty."""
    try:
        for f in files:
            copy_verified(shards.folder / f.name, folder / f.name, f.sha256)
    except RunFailed as e:
        return str(e)
    except OSError as e:
        full = " (the disk filled while copying)" if e.errno == errno.ENOSPC else ""
        return f"data.stage=node-local: copying to {folder} failed{full}: {e}"
    return ""


def _first(errors: Sequence[str]) -> str:
    return next((e for e in errors if e), "")


@contextlib.contextmanager
def node_local(shards: fmt.ShardSet, train_files_of: Callable[[int], Sequence], ctx,
               every_node: Sequence[str], chief_node: Sequence[str] = (),
               env: Mapping[str, str] = os.environ) -> Iterator[fmt.ShardSet]:
    """The shard set as read from this node's local copy, for the ``with`` block; every rank
    of the job enters together (the checks and copies end in collectives)."""
    engine = ctx.engine
    hosts = engine.allgather_object(socket.gethostname())
    tag = engine.broadcast_object(uuid.uuid4().hex[:12])  # one folder name for the whole job
    root, named_by = stage_root(env)
    node_plan = plan(shards, train_files_of, hosts, ctx.rank, every_node, chief_node)
    refused = _first(engine.allgather_object(room_error(node_plan, root, named_by)))
    if refused:
        raise UserError(refused)
    folder = root / f"lars-stage-{tag}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        failed = _first(engine.allgather_object(_copy_all(shards, node_plan.mine, folder)))
        if failed:
            raise RunFailed(failed)
        if ctx.is_chief:
            print(f"data: staged {len(node_plan.node)} file(s), {_size(sum(f.bytes for f in node_plan.node))}"
                  f", on each node's {named_by} ({folder})", flush=True)
        yield dataclasses.replace(shards, folder=folder)
    finally:
        _remove(node_plan.mine, folder)


def _remove(files: Sequence, folder: Path) -> None:
    """This rank's copies; the last rank of the node to finish removes the folder."""
    for f in files:
        for path in (folder / f.name, folder / (f.name + ".partial")):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _size(nbytes: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while nbytes >= 1000 and step < len(units) - 1:
        nbytes, step = nbytes / 1000, step + 1
    return f"{nbytes:.0f} B" if step == 0 else f"{nbytes:.1f} {units[step]}"
