"""Extra sbatch options a site or a user asks for (``--account``, ``--qos``, ``--constraint`` ...).

They come from the cluster profile (``sbatch:`` at the top or in a partition), the spec
(``resources.sbatch``) and the command line (``--sbatch KEY=VALUE``), later ones winning, as
submitit's ``additional_parameters`` do.  Each key is checked against the options sbatch knows;
the options the harness computes itself (counts, time, logs, the preemption signal) are refused
with the field that sets them, so a count is never typed twice.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from harness.errors import UserError

# sbatch's long options (man sbatch, SLURM 22-24) that a job may add freely.
KNOWN = frozenset("""
account acctg-freq batch bb bbf begin cluster-constraint clusters constraint container
container-id core-spec cores-per-socket deadline delay-boot dependency distribution exclude
exclusive export export-file extra get-user-env gid gpu-bind gpu-freq gpus-per-socket
gres-flags hint hold ignore-pbs kill-on-invalid-dep licenses mail-type mail-user mcs-label
mem-bind mincpus network nice no-kill nodefile nodelist oversubscribe power prefer priority
profile propagate qos reboot reservation resv-ports sockets-per-node spread-job switches
thread-spec threads-per-core tmp tres-per-task uid use-min-nodes wait-all-nodes wckey
""".split())

# Set by the harness from the spec and the profile: where to change each instead.
HARNESS_OWNED = {
    "job-name": "name", "partition": "resources.partition (--partition)",
    "nodes": "resources.nodes (--nodes)", "time": "resources.time (--time)",
    **dict.fromkeys(("ntasks", "ntasks-per-node", "gres", "gpus", "gpus-per-node", "gpus-per-task"),
                    "resources.gpus_per_node (--gpus-per-node)"),
    "cpus-per-task": "the partition's cpus_per_node in the cluster profile",
    **dict.fromkeys(("mem", "mem-per-cpu", "mem-per-gpu"),
                    "the partition's memory_gb in the cluster profile"),
    **dict.fromkeys(("output", "error"), "the harness (runs/<name>/slurm/)"),
    **dict.fromkeys(("signal", "requeue", "no-requeue"),
                    "the preemption protocol (slurm/preemption.py)"),
    "chdir": "the folder you submit from",
    "open-mode": "the harness (a requeued job appends to its logs)",
    "comment": "the harness (it marks its jobs for harness status)",
    "array": "a later harness sweep",
}


def check(options: Any, where: str) -> dict[str, Optional[str]]:
    """{option: value or None for a flag}, or exit 2 naming ``where`` and the bad key or value."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise UserError(f"{where}={options!r}: expected a mapping of sbatch options, "
                        "e.g. {account: physics, qos: normal}")
    checked = {}
    for key, value in options.items():
        key = str(key).removeprefix("--")
        label = f"{where} {key}" if where.startswith("--") else f"{where}.{key}"
        if key in HARNESS_OWNED:
            raise UserError(f"{label}: set by {HARNESS_OWNED[key]}, not as an extra "
                            "sbatch option")
        if key not in KNOWN:
            raise UserError(f"{label}: not an sbatch option the harness knows; known: "
                            + ", ".join(sorted(KNOWN)))
        checked[key] = _value(value, label)
    return checked


def _value(value: Any, where: str) -> Optional[str]:
    if value is None or value is True:
        return None  # a flag such as --exclusive
    if value is False or isinstance(value, (dict, list)):
        raise UserError(f"{where}={value!r}: give a word or number, or leave it empty for a flag")
    text = str(value)
    if not text or any(c in text for c in "\n\r\x00"):
        raise UserError(f"{where}={text!r}: one line of text, not empty")
    return text


def parse_cli(pairs: Iterable[str]) -> dict[str, Optional[str]]:
    """``--sbatch KEY=VALUE`` (or ``--sbatch KEY`` for a flag) as checked options."""
    raw = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key:
            raise UserError(f"--sbatch {pair!r}: expected KEY=VALUE, e.g. --sbatch account=physics")
        raw[key] = value if sep else None
    return check(raw, "--sbatch")


def merged(*layers: Mapping[str, Optional[str]]) -> dict[str, Optional[str]]:
    """Profile, then spec, then command line: the later layer wins per option."""
    out: dict[str, Optional[str]] = {}
    for layer in layers:
        out.update(layer)
    return out
