"""The job spec: a YAML file beside each job, loaded into frozen dataclasses.

Each concern has its own dataclass; each component receives only its own
sub-spec.  Valid keys, their types and defaults come from the dataclass
fields themselves (never from a hand-kept list), so the error for an unknown
key and `harness validate` can never drift from the code.

Paths: a data file written in the YAML is relative to the YAML's folder; one
given with ``--set`` is relative to the current directory, as on any command
line.  ``checkpoint.dir`` is relative to the current directory.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from harness.engines import DEFAULT as DEFAULT_ENGINE, ENGINES
from harness.errors import UserError

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad", "adadelta")
MIXED_PRECISION_MIN_CC = (7, 0)  # tensor cores from Volta on; Pascal runs float16 at 1/64 rate
LR_SCALINGS = ("linear", "sqrt", "none")
DECAYS = ("none", "cosine")  # the rate schedules harness.runtime.lr.rate_at follows


class FieldError(ValueError):
    """Raised in ``__post_init__``; the loader adds the file and the dotted path."""

    def __init__(self, name: str, value: Any, allowed: str):
        super().__init__(f"{name}={value!r}: {allowed}")
        self.name, self.value, self.allowed = name, value, allowed


def doc(text: str, **extra: Any) -> dict:
    """Field metadata: a one-line description with unit and allowed values."""
    return {"doc": text, **extra}


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise FieldError(name, value, allowed)


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int = field(default=10, metadata=doc("passes over the training set; 1..100000"))
    batch_size: int = field(default=32, metadata=doc("samples per step per process; 1..65536"))
    optimizer: str = field(default="adam", metadata=doc("one of " + ", ".join(OPTIMIZERS)))
    learning_rate: float = field(default=1e-3, metadata=doc("base rate for one process; > 0"))
    lr_scaling: str = field(
        default="linear", metadata=doc("scale by the number of processes: linear, sqrt or none"))
    warmup_epochs: float = field(
        default=0.0, metadata=doc("epochs to ramp from the base to the scaled rate; >= 0"))
    lr_decay: str = field(default="none", metadata=doc(
        "after the warm-up: none (the scaled rate held) or cosine (a half cosine down to 0 "
        "at the last epoch)"))
    seed: int = field(default=42, metadata=doc("seeds Python, NumPy and TensorFlow; >= 0"))
    early_stopping: bool = field(default=False, metadata=doc(
        "stop after `patience` epochs without improvement and restore the best weights (Keras)"))
    patience: int = field(default=3, metadata=doc(
        "epochs without a val_loss improvement before early stopping stops and the verdict "
        "judges; 1..1000"))
    min_delta: float = field(default=0.0, metadata=doc(
        "a val_loss improvement counts only when larger than this (loss units); >= 0"))
    gl_threshold: float = field(default=2.0, metadata=doc(
        "percent above its best that val_loss must end for the verdict to call it overfitting "
        "(Prechelt's generalization loss GL); 0.1..1000"))
    engine: str = field(default=DEFAULT_ENGINE, metadata=doc(
        "horovod (TensorFlow 2.15, Keras 2, MPI) or tf (current TensorFlow, Keras 3, "
        "MultiWorkerMirroredStrategy)"))
    fp16_allreduce: bool = field(
        default=False, metadata=doc("send gradients as float16 (Horovod compression): half the bytes"))
    mixed_precision: bool = field(default=False, metadata=doc(
        "Keras mixed_float16 policy: float16 compute, float32 weights; refused on Pascal GPUs "
        "(compute capability < 7.0: GTX 1080 Ti, 1050 Ti), where float16 is far slower"))
    steps_per_execution: int = field(default=1, metadata=doc(
        "steps per call from the host (Keras): fewer dispatches and callback rounds; the rate "
        "schedule and the preemption check act between calls; 1..1000"))
    jit_compile: bool = field(default=False, metadata=doc(
        "compile the training step with XLA (Keras jit_compile)"))
    profile_steps: str = field(default="", metadata=doc(
        "A:B: profile steps A..B (counted from 1 over the run) on rank 0; artifacts profile/ "
        "(also --profile-steps on run and submit); empty: off"))

    def __post_init__(self):
        _require(1 <= self.epochs <= 100_000, "epochs", self.epochs, "use 1..100000")
        _require(1 <= self.batch_size <= 65_536, "batch_size", self.batch_size, "use 1..65536")
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
                 "use one of " + ", ".join(OPTIMIZERS))
        _require(0 < self.learning_rate <= 10, "learning_rate", self.learning_rate,
                 "use a number in (0, 10]")
        _require(self.lr_scaling in LR_SCALINGS, "lr_scaling", self.lr_scaling,
                 "use one of " + ", ".join(LR_SCALINGS))
        _require(0 <= self.warmup_epochs <= 1000, "warmup_epochs", self.warmup_epochs,
                 "use 0..1000 epochs")
        _require(self.lr_decay in DECAYS, "lr_decay", self.lr_decay,
                 "use one of " + ", ".join(DECAYS))
        _require(self.seed >= 0, "seed", self.seed, "use an integer >= 0")
        _require(1 <= self.patience <= 1000, "patience", self.patience, "use 1..1000")
        _require(0 <= self.min_delta <= 1e6, "min_delta", self.min_delta, "use a number >= 0")
        _require(0.1 <= self.gl_threshold <= 1000, "gl_threshold", self.gl_threshold,
                 "use 0.1..1000 (percent)")
        _require(self.engine in ENGINES, "engine", self.engine, "use one of " + ", ".join(ENGINES))
        _require(1 <= self.steps_per_execution <= 1000, "steps_per_execution",
                 self.steps_per_execution, "use 1..1000 steps per call")
        if self.profile_steps:
            first, _, last = self.profile_steps.partition(":")
            ok = first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) < int(first) + 1000
            _require(ok, "profile_steps", self.profile_steps,
                     "use A:B, steps counted from 1 over the run, A <= B, at most 1000 steps")
        # MultiWorkerMirroredStrategy has no gradient compression to switch on.
        compressing = [name for name, e in ENGINES.items() if e.gradient_compression]
        _require(not self.fp16_allreduce or self.engine in compressing, "fp16_allreduce",
                 self.fp16_allreduce, f"only the {', '.join(compressing)} engine compresses "
                 f"gradients; use false with training.engine={self.engine}")

    @property
    def profiled_steps(self) -> tuple[int, int] | None:
        if not self.profile_steps:
            return None
        first, _, last = self.profile_steps.partition(":")
        return int(first), int(last)


NCCL_NAME = re.compile(r"NCCL_[A-Z0-9_]+")


@dataclass(frozen=True)
class CommunicationSpec:
    """How gradients travel: Horovod's tuning knobs and NCCL's settings, exported to every rank
    (and written into the batch script) before the engine starts."""

    fusion_threshold_mb: float = field(default=0.0, metadata=doc(
        "Horovod tensor fusion buffer, MB (HOROVOD_FUSION_THRESHOLD); 0: Horovod's default "
        "(128 MB)"))
    cycle_time_ms: float = field(default=0.0, metadata=doc(
        "Horovod's wait between fusion cycles, ms (HOROVOD_CYCLE_TIME); 0: Horovod's default"))
    autotune: bool = field(default=False, metadata=doc(
        "let Horovod tune fusion and cycle time while training (HOROVOD_AUTOTUNE)"))
    hierarchical_allreduce: bool = field(default=False, metadata=doc(
        "reduce inside each node first, then across nodes (HOROVOD_HIERARCHICAL_ALLREDUCE)"))
    backward_passes_per_step: int = field(default=1, metadata=doc(
        "Horovod: accumulate this many steps' gradients locally between allreduces; 1..64"))
    nccl: Any = field(default=None, metadata=doc(
        "NCCL environment variables, e.g. {NCCL_SOCKET_IFNAME: ib0, NCCL_SOCKET_NTHREADS: 4}; "
        "over the partition's"))

    def __post_init__(self):
        _require(0 <= self.fusion_threshold_mb <= 65536, "fusion_threshold_mb",
                 self.fusion_threshold_mb, "use 0 (default)..65536 MB")
        _require(0 <= self.cycle_time_ms <= 10_000, "cycle_time_ms", self.cycle_time_ms,
                 "use 0 (default)..10000 ms")
        _require(1 <= self.backward_passes_per_step <= 64, "backward_passes_per_step",
                 self.backward_passes_per_step, "use 1..64")
        nccl = self.nccl if self.nccl is not None else {}
        _require(isinstance(nccl, Mapping), "nccl", self.nccl, "use a mapping NCCL_NAME: value")
        for name, value in nccl.items():
            _require(NCCL_NAME.fullmatch(str(name)) is not None, f"nccl.{name}", value,
                     "names start with NCCL_ (capitals, digits, '_')")
            _require(isinstance(value, (str, int, float)) and not isinstance(value, bool),
                     f"nccl.{name}", value, "use a string or a number")

    def horovod_set(self) -> list[str]:
        """The Horovod-only knobs this spec changes from their defaults."""
        defaults = CommunicationSpec()
        return [name for name in ("fusion_threshold_mb", "cycle_time_ms", "autotune",
                                  "hierarchical_allreduce", "backward_passes_per_step")
                if getattr(self, name) != getattr(defaults, name)]

    def environment(self) -> dict:
        """The variables the ranks need: HOROVOD_* for the knobs set, and the NCCL ones."""
        env = {}
        if self.fusion_threshold_mb:
            env["HOROVOD_FUSION_THRESHOLD"] = str(int(self.fusion_threshold_mb * 1024 * 1024))
        if self.cycle_time_ms:
            env["HOROVOD_CYCLE_TIME"] = f"{self.cycle_time_ms:g}"
        if self.autotune:
            env["HOROVOD_AUTOTUNE"] = "1"
        if self.hierarchical_allreduce:
            env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1"
        env.update({str(k): str(v) for k, v in (self.nccl or {}).items()})
        return env


@dataclass(frozen=True)
class CheckpointSpec:
    dir: str = field(default="", metadata=doc("where checkpoints go; default runs/<name>/checkpoints"))
    every_epochs: int = field(default=1, metadata=doc("epochs between checkpoints; >= 1"))

    def __post_init__(self):
        _require(self.every_epochs >= 1, "every_epochs", self.every_epochs, "use an integer >= 1")


_SLURM_TIME = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
    r"|(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})|(?P<mm>\d+)(?::(?P<ss>\d{1,2}))?)$")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds in a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]), None if malformed."""
    m = _SLURM_TIME.match(text)
    if not m:
        return None
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "days" in g:
        return ((g["days"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "h" in g:
        return (g["h"] * 60 + g["m"]) * 60 + g["s"]
    return g["mm"] * 60 + g.get("ss", 0)


@dataclass(frozen=True)
class ResourcesSpec:
    nodes: int = field(default=1, metadata=doc("nodes to allocate on SLURM; 1..64"))
    gpus_per_node: int = field(default=1, metadata=doc("GPUs (= processes) per node; 0..16"))
    partition: str = field(default="", metadata=doc("SLURM partition; empty: the cluster default"))
    time: str = field(default="01:00:00", metadata=doc("time limit, HH:MM:SS or D-HH:MM:SS"))
    sbatch: Any = field(default=None, metadata=doc(
        "extra sbatch options, e.g. {account: physics, qos: normal}; checked when rendering"))

    def __post_init__(self):
        _require(1 <= self.nodes <= 64, "nodes", self.nodes, "use 1..64")
        _require(0 <= self.gpus_per_node <= 16, "gpus_per_node", self.gpus_per_node, "use 0..16")
        _require(re.fullmatch(r"[A-Za-z0-9_.-]*", self.partition) is not None, "partition",
                 self.partition, "use letters, digits, '_', '.', '-'")
        seconds = slurm_time_seconds(self.time)
        _require(seconds is not None and seconds > 0, "time", self.time,
                 "use HH:MM:SS, D-HH:MM:SS or minutes, above zero")

    @property
    def time_seconds(self) -> int:
        return slurm_time_seconds(self.time)


@dataclass(frozen=True)
class TrackingSpec:
    enabled: bool = field(default=True, metadata=doc("false: no MLflow run at all (benchmarks)"))
    experiment: str = field(default="", metadata=doc("MLflow experiment; empty: the spec's name"))
    required: bool = field(
        default=True, metadata=doc("false: train on when the tracking server is unreachable"))
    log_model: bool = field(default=False, metadata=doc("log the final model in Keras format"))
    batch_metrics_every: int = field(
        default=0, metadata=doc("also log batch loss every N steps; 0: off"))

    def __post_init__(self):
        _require(self.batch_metrics_every >= 0, "batch_metrics_every", self.batch_metrics_every,
                 "use 0 (off) or a positive number of steps")


@dataclass(frozen=True)
class TelemetrySpec:
    enabled: bool = field(default=True, metadata=doc("sample NVML/host metrics on each node"))
    interval_s: float = field(default=1.0, metadata=doc("seconds between samples; 0.1..60"))
    full_rate_s: float = field(default=3600.0, metadata=doc(
        "seconds from the start stored at full rate in MLflow; then one value per window"))
    window_s: float = field(default=60.0, metadata=doc(
        "after full_rate_s, one value per metric per window (a gauge's mean and maximum, a clock's "
        "mean, a total's last reading, every clock-event reason seen); interval_s..3600"))

    def __post_init__(self):
        _require(0.1 <= self.interval_s <= 60, "interval_s", self.interval_s, "use 0.1..60 seconds")
        _require(self.full_rate_s >= 0, "full_rate_s", self.full_rate_s,
                 "use 0 or more seconds (0: windows from the start)")
        _require(self.interval_s <= self.window_s <= 3600, "window_s", self.window_s,
                 f"use interval_s ({self.interval_s:g})..3600 seconds")


@dataclass(frozen=True)
class JobSpec:
    name: str = field(metadata=doc("run name: letters, digits, '_', '-', '.'"))
    job: str = field(metadata=doc("the job script (path relative to the spec) or module"))
    data: Any = field(default=None, metadata=doc("the job's own data settings", nested="job"))
    training: TrainingSpec = field(default_factory=TrainingSpec, metadata=doc("optimisation"))
    communication: CommunicationSpec = field(default_factory=CommunicationSpec,
                                             metadata=doc("gradient communication settings"))
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec, metadata=doc("checkpoints"))
    resources: ResourcesSpec = field(default_factory=ResourcesSpec, metadata=doc("SLURM request"))
    tracking: TrackingSpec = field(default_factory=TrackingSpec, metadata=doc("MLflow"))
    telemetry: TelemetrySpec = field(default_factory=TelemetrySpec, metadata=doc("GPU telemetry"))
    spec_path: str = field(default="", metadata=doc("set by the loader", internal=True))

    def __post_init__(self):
        _require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", self.name or "") is not None,
                 "name", self.name, "use 1-100 letters, digits, '_', '-', '.' (no spaces)")
        knobs = self.communication.horovod_set()
        tunable = [name for name, e in ENGINES.items() if e.horovod_knobs]
        if knobs and self.training.engine not in tunable:
            raise FieldError(f"communication.{knobs[0]}", getattr(self.communication, knobs[0]),
                             f"a Horovod setting; remove it or use training.engine="
                             f"{' or '.join(tunable)} (not {self.training.engine})")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or f"runs/{self.name}/checkpoints")

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name


# --------------------------------------------------------------------------- loading

def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check a scalar against its annotated type; ints are accepted where floats are."""
    ok = (isinstance(value, bool) if tp is bool else
          isinstance(value, int) and not isinstance(value, bool) if tp is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
          isinstance(value, str) if tp is str else True)
    if not ok:
        hint = "; quote it in YAML, e.g. \"01:00:00\"" if tp is str and isinstance(value, int) else ""
        raise UserError(f"{path}={value!r}: expected {_type_name(tp)}{hint}")
    return float(value) if tp is float else value


def valid_keys(cls) -> str:
    """'key (default), ...' for an error message, computed from the dataclass."""
    parts = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.default is not dataclasses.MISSING and not dataclasses.is_dataclass(f.default):
            parts.append(f"{f.name} (default {f.default!r})")
        else:
            parts.append(f.name)
    return ", ".join(parts)


def build(cls, raw: Any, path: str, resolve_file=None) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, naming ``path`` in every error."""
    label = path or "spec"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(f"{label}: expected a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise UserError(f"{where}{unknown[0]}: unknown key; valid keys in {label}: {valid_keys(cls)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{dotted}: missing; it is required ({f.metadata.get('doc', '')})")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, raw[name], dotted, resolve_file)
        elif tp is Any:
            kwargs[name] = raw[name]
        else:
            value = _coerce(raw[name], tp, dotted)
            if f.metadata.get("file") and resolve_file and value:
                value = resolve_file(dotted, value)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except FieldError as e:
        where = f"{path}." if path else ""
        raise UserError(f"{where}{e.name}={e.value!r}: {e.allowed}") from None


def describe(obj: Any) -> dict:
    """The resolved spec as plain data (for printing, MLflow params and checkpoints)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = describe(value) if dataclasses.is_dataclass(value) else value
    return out


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{'training': {'epochs': 3}} -> {'training.epochs': 3}."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
