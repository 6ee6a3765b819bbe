"""Imports point one way: CLI -> scaling | sweep -> group -> runtime -> slurm | tracking | telemetry | data -> spec -> base.

An AST walk over every module (imports inside functions included, since the CLI imports lazily)
checks that no module imports a layer above its own, and that the three middle packages, which
are peers, never import one another.  The tree is the architecture; this test keeps it so.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

# Top to bottom.  A module may import its own package and any lower layer, nothing else of ours.
LAYERS = [
    ["harness.cli"],
    ["harness.scaling", "harness.sweep"],  # peers: orchestrate runs, never each other
    ["harness.group"],  # the core both share: points, parent and child runs, the local runner
    ["harness.runtime"],
    ["slurm", "tracking", "harness.telemetry", "harness.data"],  # peers: none imports another
    ["harness.spec"],
    ["harness.engines"],  # which engine runs in which environment (package metadata only)
    ["harness.errors", "harness.files", "harness.entrypoints"],
]
JOBS = ["jobs"]  # user code: may use the spec layer and below, never the harness's machinery
OURS = ("harness", "slurm", "tracking", "jobs")


def unit_of(module: str) -> str | None:
    """The layer entry (package or module) a dotted module name belongs to."""
    if module == "harness":  # the empty top package: its modules carry the layers
        return "harness.files"
    for units in LAYERS + [JOBS]:
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return unit
    return None


def rank_of(unit: str) -> int:
    return next((i for i, units in enumerate(LAYERS) if unit in units), -1)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str) -> set[str]:
    names = set()
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in OURS}


def violations(root: Path = REPO) -> list[str]:
    found = []
    for folder in OURS:
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            mine = unit_of(module)
            if mine is None:
                found.append(f"{module}: in no layer; add it to LAYERS")
                continue
            for name in imported(ast.parse(path.read_text()), module):
                other = unit_of(name)
                if other is None or other == mine:
                    continue
                if mine in JOBS:
                    ok = rank_of(other) >= rank_of("harness.spec")
                else:
                    ok = other not in JOBS and rank_of(other) > rank_of(mine)
                if not ok:
                    found.append(f"{module} imports {name}: {mine} may not depend on {other}")
    return sorted(set(found))


def test_imports_point_one_way():
    assert violations() == []


def test_the_check_catches_upward_and_sideways_imports(tmp_path):
    """The rule itself, on a small tree: tracking reaching into the runtime (upward, inside a
    function) or into slurm (a peer) is reported; a job using the spec layer is fine."""
    for name, text in {
        "tracking/report.py": "def f():\n    from harness.runtime import overfitting\n",
        "tracking/run.py": "import slurm.render\nfrom harness.spec.schema import JobSpec\n",
        "jobs/mine.py": "from harness.spec.jobs import Splits\n",
        "harness/runtime/trainer.py": "from tracking import run\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "tracking.report imports harness.runtime.overfitting: tracking may not depend on "
        "harness.runtime",
        "tracking.report imports harness.runtime: tracking may not depend on harness.runtime",
        "tracking.run imports slurm.render: tracking may not depend on slurm",
    ]


@pytest.mark.parametrize("folder", ["harness", "slurm", "tracking"])
def test_every_package_folder_is_a_package(folder):
    for sub in [p for p in (REPO / folder).rglob("*") if p.is_dir() and any(p.glob("*.py"))]:
        assert (sub / "__init__.py").is_file(), f"{sub} holds modules but no __init__.py"


# --------------------------------------------------------------------------- one path to MLflow

MLFLOW_OWNERS = ("tracking",)  # every MLflow call lives here (tracking/tracker.py, tracking/runs.py)
CLIENT_MODULES = ("mlflow", "tracking.mlflow_tracker")  # the client itself, and its raw wrapper


def mlflow_imports(root: Path = REPO) -> list[str]:
    """Modules outside tracking/ that import MLflow or its client: each is a second path."""
    found = []
    for folder in ("harness", "slurm", "jobs"):
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if any(name == c or name.startswith(c + ".") for c in CLIENT_MODULES):
                        found.append(f"{module} imports {name}")
    return found


def test_every_mlflow_write_goes_through_tracking():
    assert mlflow_imports() == []


def test_the_mlflow_check_catches_a_client_in_a_function(tmp_path):
    for name, text in {
        "harness/sweep/runs.py": "def f():\n    from mlflow.entities import Param\n",
        "slurm/status.py": "def g():\n    from tracking.mlflow_tracker import MlflowClient\n",
        "harness/cli.py": "from tracking.runs import RunStore\nimport mlflow\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(mlflow_imports(tmp_path)) == [
        "harness.cli imports mlflow", "harness.sweep.runs imports mlflow.entities",
        "slurm.status imports tracking.mlflow_tracker"]


# --------------------------------------------------------------------------- engines own theirs

ENGINE_OWNERS = {"harness.engines", "harness.runtime.hvd_engine", "harness.runtime.tf_engine"}


def engine_branches(root: Path = REPO) -> list[str]:
    """Comparisons against an engine's name outside the registry and the engines' own modules:
    each is a place a new engine would have to be added by hand."""
    from harness.engines import ENGINES
    names = set(ENGINES)

    def is_engine_name(node) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_engine_name(e) for e in node.elts)
        return False

    found = []
    for folder in ("harness", "slurm", "tracking"):
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            if module in ENGINE_OWNERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare) and any(
                        is_engine_name(n) for n in [node.left, *node.comparators]):
                    found.append(f"{module}:{node.lineno} compares with an engine's name")
    return found


def test_no_module_branches_on_an_engines_name():
    assert engine_branches() == []


def test_the_engine_check_catches_a_branch(tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "render.py").write_text(
        "def f(spec):\n    if spec.engine == 'tf':\n        return 1\n"
        "    return spec.engine in ('horovod', 'other')\n")
    assert engine_branches(tmp_path) == ["slurm.render:2 compares with an engine's name",
                                         "slurm.render:4 compares with an engine's name"]


# --------------------------------------------------------------------------- one cluster environment

PLACEMENT_OWNERS = {"harness.runtime.cluster_env", "slurm.environment"}
# The variables that say where a process sits; TF_CONFIG is written by the local launcher
# (harness.runtime.launcher) and read only by the cluster environment.
PLACEMENT_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "HOROVOD_RANK",
                       "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD", "PMIX_RANK",
                       "PMI_SIZE")


def placement_reads(root: Path = REPO) -> list[str]:
    """Modules other than the cluster environment that name a rank variable, or read TF_CONFIG."""
    found = []
    for folder in ("harness", "slurm", "tracking"):
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(path, root)
            if module in PLACEMENT_OWNERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                        v in node.value for v in PLACEMENT_VARIABLES):
                    found.append(f"{module}:{node.lineno} names {node.value!r}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("get", "getenv") and node.args
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value == "TF_CONFIG"):
                    found.append(f"{module}:{node.lineno} reads TF_CONFIG")
    return found


def test_only_the_cluster_environment_reads_where_a_process_is():
    assert placement_reads() == []


def test_the_placement_check_catches_a_second_reader(tmp_path):
    for name, text in {
        "harness/runtime/trainer.py": "import os\nrank = int(os.environ['OMPI_COMM_WORLD_RANK'])\n",
        "harness/runtime/tf_engine.py": "import os, json\ncfg = json.loads(os.environ.get('TF_CONFIG'))\n",
        "harness/runtime/launcher.py": "env = dict(TF_CONFIG='{}')\n",  # writing it is the launcher's job
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert placement_reads(tmp_path) == [
        "harness.runtime.tf_engine:2 reads TF_CONFIG",
        "harness.runtime.trainer:2 names 'OMPI_COMM_WORLD_RANK'"]
