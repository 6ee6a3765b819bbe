"""Which Python runs which engine, and how local tf workers are told who they are."""
from __future__ import annotations

import json

import pytest

from harness import engines
from harness.errors import UserError
from harness.runtime.launcher import tf_worker_envs


def test_an_engine_without_its_environment_names_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "provided_here", lambda engine: False)
    with pytest.raises(UserError) as refused:
        engines.python_for("tf", repo=tmp_path)
    assert "training.engine='tf'" in str(refused.value)
    assert "make setup ENGINE=tf" in str(refused.value) and str(tmp_path / ".venv-tf") in str(refused.value)
    (tmp_path / ".venv-tf" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-tf" / "bin" / "python").touch()
    assert engines.python_for("tf", repo=tmp_path) == str(tmp_path / ".venv-tf" / "bin" / "python")


def test_this_environment_runs_exactly_one_engine():
    """TensorFlow 2.15 with Horovod, or TensorFlow >= 2.16 (Keras 3): never both."""
    assert [engines.provided_here(e) for e in engines.ENGINES].count(True) == 1


def test_local_tf_workers_share_one_cluster_and_each_has_its_index():
    envs = tf_worker_envs(3, {"PATH": "/bin"})
    configs = [json.loads(env["TF_CONFIG"]) for env in envs]
    clusters = {json.dumps(c["cluster"]) for c in configs}
    assert len(clusters) == 1 and [c["task"] for c in configs] == [
        {"type": "worker", "index": i} for i in range(3)]
    ports = [address.rsplit(":", 1)[1] for address in configs[0]["cluster"]["worker"]]
    assert len(set(ports)) == 3 and all(env["PATH"] == "/bin" for env in envs)
