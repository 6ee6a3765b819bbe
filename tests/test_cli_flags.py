"""The CLI's verbs and flags are pinned: a new flag is a decision, not an accident."""
from __future__ import annotations

import argparse

from harness.cli import build_parser

EXPECTED = {
    "validate": {"spec", "--set"},
    "run": {"spec", "--set", "--np", "--resume", "--profile-steps"},
    "render": {"spec", "--set", "--nodes", "--gpus-per-node", "--partition", "--time", "--cluster",
               "--sbatch", "--profile-steps"},
    "submit": {"spec", "--set", "--nodes", "--gpus-per-node", "--partition", "--time", "--cluster",
               "--sbatch", "--dry-run", "--resume", "--profile-steps"},
    "sweep": {"spec", "--set", "--grid", "--random", "--range", "--seed", "--max-parallel",
              "--objective", "--local", "--np", "--dry-run", "--summarize", "--nodes", "--gpus-per-node",
              "--partition", "--time", "--cluster", "--sbatch"},
    "status": {"job_id"},
    "scale": {"spec", "--set", "--gpus", "--layout", "--repeats", "--local", "--partition", "--cluster",
              "--sbatch", "--predict", "--step-ms", "--from-run", "--probe", "--comm-floor-ms"},
    "probe": {"--np", "--controller", "--engine", "--max-bytes", "--log", "--out"},
    "report": {"run_id"},
    "tracking serve": {"--store", "--backend", "--workers", "--host", "--port", "--artifacts",
                       "--auth", "--allow-host"},
    "tracking import": {"file", "--store", "--backend"},
    "tracking backup": {"dest", "--store", "--backend", "--artifacts"},
    "tracking restore": {"src", "--store", "--backend", "--artifacts"},
    "tracking add-user": {"username", "--url"},
    "data pack": {"src", "dest", "--set", "--shard-mb", "--val-fraction", "--test-fraction", "--seed"},
    "data inspect": {"folder", "--full"},
}


def _flags(parser) -> dict:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for key, flags in _flags(sub).items():
                    found[f"{name} {key}".strip()] = flags
        elif not isinstance(action, argparse._HelpAction):
            found.setdefault("", set()).add(action.option_strings[0] if action.option_strings else action.dest)
    return found


def test_cli_flag_set_is_pinned():
    found = {k: v for k, v in _flags(build_parser()).items() if k and k != "tracking"}
    assert found == EXPECTED



def test_every_flag_is_in_the_guides():
    """A flag nobody can read about is a flag nobody uses: each verb's flags appear in README.md
    or a guide in docs/ (the pinned set above says what exists, this that it is explained)."""
    from conftest import REPO
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in REPO.glob("docs/*.md"))
    missing = sorted(f"{verb}: {flag}" for verb, flags in EXPECTED.items() for flag in flags
                     if flag.startswith("--") and flag not in text)
    assert missing == []


def test_a_wrong_flag_is_one_line_and_exit_2_from_the_real_command():
    from conftest import run_cli
    done = run_cli("run", "jobs/diabetes_mlp.yaml", "--gpus", "2")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "unrecognized arguments: --gpus 2" in done.stderr
    assert "Traceback" not in done.stderr
