"""Shard folders with real files and real tf.data: packing, checking, and what each rank reads."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from harness.data import shards as fmt
from harness.errors import UserError


def _arrays(n_train=2000, n_test=300, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """2000 MNIST-shaped training images in 7 files (about 0.25 MB each), 300 test images."""
    folder = tmp_path_factory.mktemp("shards")
    arrays = _arrays()
    np.savez(folder / "digits.npz", **arrays)
    done = run_cli("data", "pack", folder / "digits.npz", folder / "digits", "--shard-mb", "0.25",
                   cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]
    return fmt.read(folder / "digits"), arrays, done.stdout


def test_pack_writes_balanced_files_and_a_manifest_that_says_what_they_hold(packed):
    shards, arrays, out = packed
    train = shards.split("train")
    assert len(train) >= 6 and sum(f.samples for f in train) == 2000
    assert shards.samples("test") == 300 and shards.splits == ["train", "test"]
    assert shards.x == fmt.ArraySpec((28, 28), "uint8") and shards.y == fmt.ArraySpec((), "uint8")
    counts = {}
    for f in train:
        for label, n in f.label_counts.items():
            counts[int(label)] = counts.get(int(label), 0) + n
    assert counts == {int(k): int(v) for k, v in zip(*np.unique(arrays["y_train"], return_counts=True))}
    assert [f.first_id for f in train] == list(np.cumsum([0] + [f.samples for f in train])[:-1])
    assert shards.source["kind"] == "npz" and "train on it with --set data.path=" in out
    assert all(f.sha256 == fmt.sha256_of(shards.folder / f.name) for f in shards.files)


def test_two_ranks_read_disjoint_whole_files_and_every_sample_once_per_epoch(packed):
    from harness.runtime import streaming
    shards, arrays, _ = packed
    seen, files, steps = [], [], set()
    for rank in range(2):
        share = streaming.rank_share(shards, rank, 2, batch=64, seed=7)
        files.append({f.name for f in share.files})
        steps.add(share.steps)
        epoch = list(streaming.training_dataset(shards, share, rank, 7, 0, 1, with_ids=True))
        assert len(epoch) == share.steps  # the same number of steps on every rank
        for x, y, ids in epoch:
            ids = ids.numpy()
            np.testing.assert_array_equal(x.numpy(), arrays["x_train"][ids])  # the right bytes
            np.testing.assert_array_equal(y.numpy(), arrays["y_train"][ids])
            seen.extend(ids)
    assert not files[0] & files[1] and len(steps) == 1
    assert sorted(seen) == list(range(2000))  # every sample once, none twice
    loads = [sum(f.samples for f in streaming.rank_share(shards, r, 2, 64, 7).files) for r in (0, 1)]
    assert abs(loads[0] - loads[1]) <= max(f.samples for f in shards.split("train"))


def test_a_resumed_run_sees_the_same_samples_in_each_epoch_as_an_uninterrupted_one(packed):
    from harness.runtime import streaming
    shards, _, _ = packed
    share = streaming.rank_share(shards, 1, 2, batch=64, seed=3)

    def epochs(start, end):
        ids = [b[2].numpy() for b in streaming.training_dataset(shards, share, 1, 3, start, end,
                                                                with_ids=True)]
        return [np.concatenate(ids[i:i + share.steps]) for i in range(0, len(ids), share.steps)]
    whole = epochs(0, 4)
    resumed = epochs(2, 4)  # preempted after epoch 2, resumed
    assert len(whole) == 4 and len(resumed) == 2
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a, b)  # same samples, same order
    assert not np.array_equal(whole[0], whole[1])  # and each epoch reshuffled
    assert sorted(whole[0]) == sorted(whole[1])


def test_validation_is_split_record_by_record_over_the_ranks(packed):
    from harness.runtime import streaming
    shards, arrays, _ = packed
    assert streaming.validation_split(shards) == "test"  # no val split: the lecture's convention
    labels = [np.concatenate([y.numpy() for _, y in streaming.evaluation_dataset(shards, "test", r, 2)])
              for r in (0, 1)]
    assert len(labels[0]) + len(labels[1]) == 300 and abs(len(labels[0]) - len(labels[1])) <= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(arrays["y_test"]))


def test_inspect_prints_the_manifest_and_finds_what_is_wrong(packed, tmp_path):
    shards, _, _ = packed
    copy = tmp_path / "copy"
    shutil.copytree(shards.folder, copy)
    ok = run_cli("data", "inspect", copy, "--full", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "train: 2000 samples in" in ok.stdout and "every file present" in ok.stdout
    first = copy / shards.split("train")[0].name
    data = first.read_bytes()
    first.write_bytes(data[:-10])  # truncated
    bad = run_cli("data", "inspect", copy, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert f"{first}: truncated: {len(data) - 10} bytes, the manifest says {len(data)}" in bad.stderr
    first.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    assert run_cli("data", "inspect", copy, cwd=tmp_path).returncode == 0  # sizes only
    flipped = run_cli("data", "inspect", copy, "--full", cwd=tmp_path)
    assert flipped.returncode == 2 and "differs from the manifest's" in flipped.stderr
    first.unlink()
    gone = run_cli("data", "inspect", copy, cwd=tmp_path)
    assert gone.returncode == 2 and f"{first}: missing" in gone.stderr


@pytest.mark.parametrize("content,words", [
    ({"x_train": np.zeros((4, 2))}, "x_train and y_train go together"),
    ({"x_test": np.zeros((4, 2)), "y_test": np.zeros(4)}, "no x_train and y_train arrays"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3)}, "x_train has 4 samples but y_train 3"),
])
def test_bad_sources_are_one_line_and_leave_nothing(tmp_path, content, words):
    np.savez(tmp_path / "bad.npz", **content)
    done = run_cli("data", "pack", tmp_path / "bad.npz", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and words in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_an_hdf5_source_packs_like_the_npz(tmp_path):
    import h5py
    arrays = _arrays(n_train=500, n_test=50, seed=1)
    with h5py.File(tmp_path / "digits.h5", "w") as f:
        for name, values in arrays.items():
            f[name] = values
    done = run_cli("data", "pack", tmp_path / "digits.h5", tmp_path / "h5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shards = fmt.read(tmp_path / "h5")
    assert shards.source["kind"] == "hdf5" and shards.samples("train") == 500
    assert json.loads((tmp_path / "h5" / fmt.MANIFEST).read_text())["splits"] == {"train": 500, "test": 50}


def test_a_folder_of_fits_cutouts_packs_by_class_with_a_seeded_split(tmp_path):
    from astropy.io import fits
    rng = np.random.default_rng(2)
    for label, count in (("lenses", 12), ("nonlenses", 18)):
        (tmp_path / "sky" / label).mkdir(parents=True)
        for i in range(count):
            fits.PrimaryHDU(rng.normal(size=(3, 16, 16)).astype(np.float32)).writeto(
                tmp_path / "sky" / label / f"{i}.fits")
    done = run_cli("data", "pack", tmp_path / "sky", tmp_path / "cutouts", "--val-fraction", "0.2",
                   "--test-fraction", "0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shards = fmt.read(tmp_path / "cutouts")
    assert shards.x == fmt.ArraySpec((3, 16, 16), "float32") and shards.source["classes"] == [
        "lenses", "nonlenses"]
    assert {s: shards.samples(s) for s in shards.splits} == {"train": 18, "val": 6, "test": 6}


def test_a_missing_manifest_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no shard manifest here"):
        fmt.read(tmp_path)


# --------------------------------------------------------------------------- a job on bad shards

MNIST = __import__("conftest").REPO / "jobs" / "mnist_mlp.yaml"


def _copy(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards.folder, copy)
    return copy


def _refused(folder, workdir, *extra):
    done = run_cli("run", MNIST, "--np", 1, "--set", f"data.path={folder}", "--set",
                   "training.epochs=1", *extra, cwd=workdir)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()  # no run
    return done.stderr


def test_missing_truncated_changed_or_miscounted_shards_never_start_a_run(packed, workdir):
    shards, _, _ = packed
    copy = _copy(shards, workdir)
    name = shards.split("train")[2].name
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[:-100])
    assert f"{copy / name}: truncated" in _refused(copy, workdir)
    (copy / name).write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    assert f"{copy / name}: SHA-256 differs from the manifest's" in _refused(copy, workdir)
    (copy / name).write_bytes(data)
    manifest = json.loads((copy / fmt.MANIFEST).read_text())
    entry = next(f for f in manifest["files"] if f["name"] == name)
    entry["samples"] += 1
    (copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    assert f"{copy / name}: {entry['samples'] - 1} records, the manifest says {entry['samples']}" \
        in _refused(copy, workdir)
    (copy / name).unlink()
    assert f"{copy / name}: missing" in _refused(copy, workdir)


def test_samples_that_do_not_fit_the_model_are_refused_before_training(tmp_path, workdir):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "wide.npz", x_train=rng.integers(0, 255, (64, 32, 32), dtype=np.uint8),
             y_train=rng.integers(0, 10, 64).astype(np.uint8),
             x_test=rng.integers(0, 255, (16, 32, 32), dtype=np.uint8),
             y_test=rng.integers(0, 10, 16).astype(np.uint8))
    assert run_cli("data", "pack", tmp_path / "wide.npz", tmp_path / "wide", cwd=tmp_path).returncode == 0
    done = run_cli("run", MNIST, "--np", 1, "--set", f"data.path={tmp_path / 'wide'}",
                   "--set", "training.epochs=1", cwd=workdir)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error: ")]
    assert said == [f"error: {tmp_path / 'wide'}: samples of shape (32, 32) do not fit "
                    "mnist_mlp's model's input (28, 28)"], done.stdout + done.stderr
    assert "epoch 1/1" not in done.stdout


def test_a_record_that_fails_to_decode_fails_the_run_naming_its_file(packed, workdir):
    """A record damaged before the file was hashed (its own CRC catches what the SHA-256
    cannot): the epoch that reads it fails the run, FAILED, with the file named; the
    checkpoint of the epoch before stays."""
    from mlflow import MlflowClient
    shards, _, _ = packed
    copy = _copy(shards, workdir)
    args = ["run", MNIST, "--np", 1, "--set", f"data.path={copy}", "--set", "checkpoint.every_epochs=1"]
    first = run_cli(*args, "--set", "training.epochs=1", cwd=workdir)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    name = shards.split("train")[1].name
    data = bytearray((copy / name).read_bytes())
    data[12 + 100] ^= 0xFF  # inside the first record's payload: its CRC no longer matches
    (copy / name).write_bytes(bytes(data))
    manifest = json.loads((copy / fmt.MANIFEST).read_text())
    next(f for f in manifest["files"] if f["name"] == name)["sha256"] = fmt.sha256_of(copy / name)
    (copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    failed = run_cli(*args, "--set", "training.epochs=2", "--resume", cwd=workdir)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert f"{copy / name}: a record fails to decode" in failed.stdout + failed.stderr
    pointer = json.loads((workdir / "runs" / "mnist_mlp" / "checkpoints" / "latest.json").read_text())
    assert pointer["epoch"] == 1
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("mnist_mlp").experiment_id])[0]
    assert run.info.status == "FAILED" and str(copy / name) in run.data.tags["failure_reason"]


def test_the_mnist_jobs_preprocess_is_what_its_load_data_does(mnist_npz):
    """A streamed batch and the in-memory arrays reach the model alike."""
    import tensorflow as tf
    from harness.spec.jobs import resolve_job
    from harness.spec.loader import load_spec
    spec = load_spec(MNIST, [f"data.path={mnist_npz}"])
    job = resolve_job(spec.job, MNIST.parent)
    splits = job.load_data(spec.data, 0)
    with np.load(mnist_npz) as raw:
        x, y = job.preprocess(tf.constant(raw["x_train"][:64]), tf.constant(raw["y_train"][:64]))
    np.testing.assert_array_equal(x.numpy(), splits.x_train[:64])
    np.testing.assert_array_equal(y.numpy(), splits.y_train[:64])
    assert x.dtype == tf.float32 and y.dtype == tf.int64


def test_an_epoch_line_says_when_the_input_starves_the_steps():
    from harness.runtime.callbacks import format_epoch
    logs = {"loss": 0.5, "val_loss": 0.6, "lr": 1e-3, "time/epoch_s": 10.0}
    assert "input-bound" not in format_epoch(0, 3, dict(logs, **{"time/data_wait_fraction": 0.05}))
    line = format_epoch(0, 3, dict(logs, **{"time/data_wait_fraction": 0.31}))
    assert "input-bound: 31% of the epoch waiting for data (try a shard folder" in line
    short = dict(logs, **{"time/epoch_s": 0.2, "time/data_wait_fraction": 0.31})
    assert "input-bound" not in format_epoch(0, 3, short)  # 60 ms: nothing worth saving


def test_the_wait_clock_measures_a_slow_pipeline_and_not_a_fast_one():
    """Steps that compute 10 ms each, fed by a pipeline that takes 30 ms a batch (nothing read
    ahead): about three quarters of the epoch is waiting.  The same steps fed at once: little."""
    import time
    import tensorflow as tf
    from harness.runtime.callbacks import InputWaitClock
    from harness.runtime.inputs import InputWait

    class Alone:  # one rank: the maximum over the ranks is its own value
        @staticmethod
        def agree_max(values):
            return values

    def fraction(delay_s: float) -> float:
        def slow(x):
            time.sleep(delay_s)
            return x
        wait = InputWait()
        data = tf.data.Dataset.range(20).map(lambda x: tf.py_function(slow, [x], tf.int64))
        batches = iter(wait.stamp(data.map(lambda x: (x,))))
        clock, logs = InputWaitClock(wait, Alone()), {}
        clock.on_epoch_begin(0)
        clock.first_epoch = False
        for step in range(20):
            clock.on_train_batch_begin(step)
            next(batches)  # the step asks for its batch ...
            time.sleep(0.010)  # ... and computes
        clock.on_epoch_end(0, logs)
        return logs["time/data_wait_fraction"]
    starved, fed = fraction(0.030), fraction(0.0)
    assert 0.5 < starved < 0.9 and fed < 0.15, (starved, fed)


@pytest.mark.multiproc
def test_the_lens_finder_streams_its_packed_simulation_on_two_ranks(workdir, tf_engine):
    """The job's own images packed by `harness data pack SPEC` (its simulation) and streamed:
    the held-out figures come from the streamed test split.  On the tf engine: on Horovod the
    lens finder simulates and trains under SLURM (tests/test_slurm.py)."""
    lens = __import__("conftest").REPO / "jobs" / "lensfinder_cnn.yaml"
    small = ["--set", "data.n_images=400", "--set", "data.num_pix=24",
             "--set", "data.test_lenses=40", "--set", "data.test_nonlenses=160"]
    packed = run_cli("data", "pack", lens, workdir / "lenses", *small, "--shard-mb", "0.5",
                     cwd=workdir)
    assert packed.returncode == 0, packed.stderr[-2000:]
    shards = fmt.read(workdir / "lenses")
    assert shards.source["kind"] == "job" and shards.x == fmt.ArraySpec((24, 24, 3), "float32")
    assert {s: shards.samples(s) for s in shards.splits} == {"train": 320, "val": 80, "test": 200}
    assert (shards.folder / "test_info.npz").exists()  # the test images' facts, in sample order
    done = run_cli("run", lens, "--np", 2, *small, "--set", f"data.path={shards.folder}",
                   "--set", "training.epochs=1", "--set", f"training.engine={tf_engine}", cwd=workdir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "data: streaming 320 samples" in done.stdout and "validating on val" in done.stdout
    assert re.search(r"val_auroc [\d.]+  val_tpr10 [\d.]+", done.stdout)  # every epoch, all ranks' scores
    # The figures lens searches publish, with intervals (jobs/lens_metrics.py; tests/test_lens_metrics.py)
    assert re.search(r"test_auroc [\d.]+ \[[\d.]+, [\d.]+\]  test_tpr0 [\d.]+ \[[\d.]+, [\d.]+\]  "
                     r"test_tpr10 [\d.]+ \[[\d.]+, [\d.]+\]", done.stdout), done.stdout[-1500:]
    assert re.search(r"test_positives 40  test_negatives 160", done.stdout)
    assert "simulating" not in done.stdout
    # The tables from the streamed test split and its facts (evaluate checks they line up).
    tables = workdir / "runs" / "lensfinder_cnn" / "evaluation"
    assert sorted(p.name for p in tables.iterdir()) == [
        "completeness.csv", "completeness.png", "false_positives_by_kind.csv", "roc.csv", "roc.png"]
    kinds = (tables / "false_positives_by_kind.csv").read_text()
    assert "spiral" in kinds and "ring" in kinds and "lens" not in kinds
    # harness report reads them back from MLflow: figures with intervals, then the tables.
    run_id = re.search(r"MLflow run (\w+)", done.stdout).group(1)
    report = run_cli("report", run_id, cwd=workdir)
    assert report.returncode == 0, report.stderr[-2000:]
    assert re.search(r"test_auroc: [\d.]+ \[[\d.]+, [\d.]+\]", report.stdout), report.stdout
    assert "evaluation/completeness.csv (23 rows)" in report.stdout
    assert re.search(r"einstein_radius_over_seeing +0\.6 +0\.8", report.stdout)


def test_a_staged_node_copies_its_ranks_files_and_the_validation_split_once(packed):
    """Four ranks on two nodes: each node needs its own ranks' training files and the
    validation split; the lowest rank of a node copies the validation files, and the test
    split (read by rank 0 after training) goes to rank 0's node only."""
    from harness.runtime import staging, streaming
    shards, _, _ = packed
    hosts = ["n1", "n1", "n2", "n2"]
    files_of = lambda r: streaming.rank_share(shards, r, 4, 64, 7).files  # noqa: E731
    test = shards.split("test")
    plans = [staging.plan(shards, files_of, hosts, r, [], ["test"]) for r in range(4)]
    assert plans[0].mine == files_of(0) + test and plans[1].mine == files_of(1)
    assert plans[0].node == plans[1].node == files_of(0) + files_of(1) + test
    assert plans[2].node == files_of(2) + files_of(3) and plans[2].mine == files_of(2)
    copied = [f.name for p in plans for f in p.mine]
    assert sorted(copied) == sorted(f.name for f in shards.files)  # every file once in the job


def test_a_staged_copy_that_differs_from_the_manifest_is_never_read(packed, tmp_path):
    from harness.errors import RunFailed
    from harness.runtime import staging
    shards, _, _ = packed
    f = shards.split("train")[0]
    staging.copy_verified(shards.folder / f.name, tmp_path / f.name, f.sha256)
    assert fmt.sha256_of(tmp_path / f.name) == f.sha256
    with pytest.raises(RunFailed, match=f"{f.name}: its copy to .* has SHA-256"):
        staging.copy_verified(shards.folder / f.name, tmp_path / "other", "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f.name]  # no .partial left behind


def test_the_stage_root_is_slurm_tmpdir_then_tmpdir():
    from harness.runtime.staging import stage_root
    assert stage_root({"SLURM_TMPDIR": "/l/job7", "TMPDIR": "/t"}) == (Path("/l/job7"), "$SLURM_TMPDIR")
    assert stage_root({"TMPDIR": "/t"}) == (Path("/t"), "$TMPDIR")
    assert stage_root({})[1] == "the system temporary folder"


@pytest.mark.parametrize("value,words", [
    ("nearby", "data.stage='nearby': use one of none, node-local"),
    ("node-local", "data.stage='node-local': stages a shard folder (harness data pack), and "
                   "data.path="),
])
def test_a_stage_that_cannot_be_done_is_refused_when_the_spec_is_read(mnist_npz, value, words):
    from harness.spec.loader import load_spec
    with pytest.raises(UserError) as refused:
        load_spec(MNIST, [f"data.path={mnist_npz}", f"data.stage={value}"])
    assert words in str(refused.value) and str(refused.value).startswith(str(MNIST))
