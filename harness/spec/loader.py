"""Read a spec file, apply ``--set`` overrides, and build a validated JobSpec."""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Iterable

import yaml

from harness.errors import UserError
from harness.files import SHARD_MANIFEST
from harness.spec.jobs import STAGES, resolve_job
from harness.spec.schema import JobSpec, build


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: spec file not found; give the path to a job's .yaml")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UserError(f"{path}: spec file not readable; check it is a file you may read")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: malformed YAML ({problem})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; a spec is UTF-8 YAML") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping (name:, job:, training: ...), got {raw!r}")
    return raw


def parse_override(text: str) -> tuple[list[str], object]:
    """'training.epochs=3' -> (['training', 'epochs'], 3); values are read as YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected key=value, for example --set training.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: Iterable[str]) -> tuple[dict, set[str]]:
    """Return a copy of ``raw`` with the overrides applied, and the dotted keys they set."""
    raw = copy.deepcopy(raw)
    touched = set()
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for part in keys[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {part} is not a section")
            node = child
        node[keys[-1]] = value
        touched.add(".".join(keys))
    return raw, touched


def _file_resolver(spec_dir: Path, from_cli: set[str]):
    """Resolve data file paths and check they can be read, naming the field in errors."""
    def resolve(dotted: str, value: str) -> str:
        base = Path.cwd() if dotted in from_cli else spec_dir
        path = (base / os.path.expanduser(value)).resolve()
        if not path.exists():
            raise UserError(f"{dotted}={value!r}: file not found ({path}); "
                            f"point it at your copy, for example --set {dotted}=/path/to/file")
        if path.is_dir() and (path / SHARD_MANIFEST).is_file():
            return str(path)  # a shard folder (harness data pack): streamed, checked at start
        if not path.is_file():
            raise UserError(f"{dotted}={value!r}: not a file ({path}); give the file's path, or "
                            "a shard folder made by `harness data pack`")
        if not os.access(path, os.R_OK):
            raise UserError(f"{dotted}={value!r}: file not readable ({path}); check its permissions")
        return str(path)
    return resolve


def check_stage(data) -> None:
    """``data.stage`` (where a job offers it): a known value, and a shard folder to stage."""
    stage = getattr(data, "stage", "none")
    if stage not in STAGES:
        raise UserError(f"data.stage={stage!r}: use one of {', '.join(STAGES)}")
    path = getattr(data, "path", "")
    if stage != "none" and not (path and (Path(path) / SHARD_MANIFEST).is_file()):
        raise UserError(f"data.stage={stage!r}: stages a shard folder (harness data pack), and "
                        f"data.path={path!r} is not one; pack the data or remove data.stage")


def load_spec(path: str | os.PathLike, overrides: Iterable[str] = ()) -> JobSpec:
    """The one way a spec is read: file, overrides, job module, data section, checks.

    Every error names the spec file first, then the field.
    """
    spec_path = Path(path)
    try:
        return _load(spec_path, overrides)
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(str(spec_path)) else f"{spec_path}: {msg}") from None


def load_resolved(raw: dict, spec_source: str, manifest: Path) -> JobSpec:
    """A spec a launch manifest holds (already resolved); ``spec_source`` is the YAML it came
    from, so tags and git state still describe the original."""
    try:
        return _build(dict(raw), set(), Path(spec_source))
    except UserError as e:
        raise UserError(f"{manifest}: {e}") from None


def _load(spec_path: Path, overrides: Iterable[str]) -> JobSpec:
    raw, touched = apply_overrides(read_yaml(spec_path), overrides)
    return _build(raw, touched, spec_path)


def _build(raw: dict, touched: set, spec_path: Path) -> JobSpec:
    job_name = raw.get("job")
    if not isinstance(job_name, str) or not job_name:
        raise UserError(f"job={job_name!r}: required; name the job script, "
                        "for example job: diabetes_mlp.py")
    module = resolve_job(job_name, spec_path.parent)
    resolver = _file_resolver(spec_path.parent.resolve(), touched)
    data = build(module.Data, raw.get("data"), "data", resolver)
    check_stage(data)
    rest = {k: v for k, v in raw.items() if k != "data"}
    spec = build(JobSpec, rest, "", resolver)
    return dataclasses.replace(spec, data=data, spec_path=str(spec_path.resolve()))
