"""A sweep's search space and its points: ``--grid`` lists, ``--random N`` draws from ``--range``.

Pure: no files, no MLflow, no SLURM.  A point is ``{dotted spec key: value}``; the sweep fixes
its points once, before anything is queued, and every later step reads them from the points
file rather than recomputing them (a seed, a Python version or a float format must not be able
to change what a requeued task trains).
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Optional

import yaml

from harness.errors import UserError

MAX_POINTS = 1000  # SLURM's default MaxArraySize is 1001 (task ids 0..1000)
# A sweep is one job array: one shape, one launch line, one place its runs go.
FIXED_KEYS = ("resources.", "training.engine", "tracking.", "checkpoint.dir", "name", "job")
SHORT_NAMES = {"learning_rate": "lr", "batch_size": "bs"}


@dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    log: bool
    integer: bool  # both ends written as integers: draw integers (batch sizes, widths)

    def describe(self) -> str:
        return f"{self.key}={self.low}:{self.high}{':log' if self.log else ''}"


@dataclass(frozen=True)
class Space:
    grid: dict = field(default_factory=dict)  # key -> list of values, in the order given
    ranges: tuple = ()  # Range, drawn --random times
    random_points: int = 0
    seed: Optional[int] = None

    def describe(self) -> str:
        """One line for the parent run: what was searched, and how."""
        parts = [f"grid {k}={','.join(map(format_value, v))}" for k, v in self.grid.items()]
        if self.random_points:
            parts.append(f"random {self.random_points} x ({'; '.join(r.describe() for r in self.ranges)}) "
                         f"seed {self.seed}")
        return "; ".join(parts)

    @property
    def varied(self) -> list[str]:
        return list(self.grid) + [r.key for r in self.ranges]


def _key(text: str, flag: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    if not sep or not key or not rest or any(not part for part in key.split(".")):
        example = {"--grid": "training.learning_rate=1e-3,3e-4",
                   "--range": "training.learning_rate=1e-5:1e-2:log"}[flag]
        raise UserError(f"{flag} {text!r}: expected key=values, for example {flag} {example}")
    if key.startswith(FIXED_KEYS) or key in ("name", "job"):
        raise UserError(f"{flag} {key}: a sweep's points share one job array (its resources, "
                        "engine, tracking and checkpoint folders); vary "
                        "training.*, data.* or checkpoint.every_epochs, or sweep separately")
    return key, rest


def _scalar(text: str):
    """A value as YAML reads it, as --set does: 3 is an int, 3e-4 a float, true a bool."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '1e-3' (no dot) as a string; the physicist meant a number.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_grid(texts: list[str]) -> dict:
    grid = {}
    for text in texts:
        key, rest = _key(text, "--grid")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list all its values in one --grid")
        values = [_scalar(v) for v in rest.split(",")]
        if any(v in ("", None) for v in values):
            raise UserError(f"--grid {text!r}: an empty value; separate values with single commas")
        grid[key] = values
    return grid


def parse_range(text: str) -> Range:
    key, rest = _key(text, "--range")
    parts = rest.split(":")
    scale = parts.pop() if len(parts) == 3 else "linear"
    ends = [_scalar(p) for p in parts]
    numeric = len(ends) == 2 and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                     for e in ends)
    if not numeric or scale not in ("linear", "log") or not ends[0] < ends[1]:
        raise UserError(f"--range {text!r}: expected key=low:high or key=low:high:log with "
                        "low < high, for example training.learning_rate=1e-5:1e-2:log")
    if scale == "log" and ends[0] <= 0:
        raise UserError(f"--range {text!r}: a log range needs low > 0")
    return Range(key, ends[0], ends[1], scale == "log",
                 all(isinstance(e, int) for e in ends))


def build_space(grid: list[str], ranges: list[str], random_points: Optional[int],
                seed: Optional[int]) -> Space:
    """The space the flags describe, or a one-line error naming the flag."""
    parsed_ranges = tuple(parse_range(r) for r in ranges)
    if len({r.key for r in parsed_ranges}) < len(parsed_ranges):
        raise UserError("--range: a key given twice; one interval per key")
    grid_values = parse_grid(grid)
    both = set(grid_values) & {r.key for r in parsed_ranges}
    if both:
        raise UserError(f"--grid and --range both vary {sorted(both)[0]}; use one")
    if parsed_ranges and not random_points:
        raise UserError("--range needs --random N: how many points to draw from the intervals")
    if random_points is not None and random_points < 1:
        raise UserError(f"--random {random_points}: draw at least 1 point")
    if random_points and not parsed_ranges:
        raise UserError(f"--random {random_points}: give the intervals to draw from with --range "
                        "key=low:high[:log]")
    if not grid_values and not parsed_ranges:
        raise UserError("harness sweep: nothing to vary; give --grid key=v1,v2 and/or "
                        "--random N --range key=low:high[:log]")
    if parsed_ranges and seed is None:
        seed = random.SystemRandom().randrange(2 ** 31)  # recorded with the sweep: repeatable
    return Space(grid_values, parsed_ranges, random_points or 0, seed)


def _draw(r: Range, rng: random.Random):
    if r.log:
        value = math.exp(rng.uniform(math.log(r.low), math.log(r.high)))
    else:
        value = rng.uniform(r.low, r.high)
    if r.integer:
        return min(int(r.high), max(int(r.low), round(value)))
    return float(f"{value:.4g}")  # a value a person can read, write and type again


def points(space: Space) -> list[dict]:
    """Every grid combination, crossed with the random draws (in that order); at most MAX_POINTS."""
    grid_points = [dict(zip(space.grid, combo)) for combo in itertools.product(*space.grid.values())]
    rng = random.Random(space.seed)
    draws = [{r.key: _draw(r, rng) for r in space.ranges} for _ in range(space.random_points)]
    combined = [{**g, **d} for g in grid_points for d in (draws or [{}])]
    if len(combined) > MAX_POINTS:
        raise UserError(f"harness sweep: {len(combined)} points; one job array holds at most "
                        f"{MAX_POINTS}: narrow the grid or draw fewer")
    return combined


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and "/" in value:
        return PurePath(value).name  # a data file: its name tells the points apart
    return str(value)


def short_names(keys: list[str]) -> dict:
    """training.learning_rate -> lr, data.dropout -> dropout; the dotted key where two clash."""
    last = {k: SHORT_NAMES.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in keys}
    clashes = {v for v in last.values() if list(last.values()).count(v) > 1}
    return {k: (k if v in clashes else v) for k, v in last.items()}


def point_name(point: dict, names: dict) -> str:
    """``lr=0.0003,dropout=0.5``: the values that vary, as the child run is named."""
    return ",".join(f"{names[k]}={format_value(v)}" for k, v in point.items())


def overrides(point: dict) -> list[str]:
    """The point as ``--set`` overrides (YAML scalars: what --set reads back)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in point.items()]
