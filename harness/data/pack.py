"""``harness data pack SRC DEST``: arrays from a file, a folder or a job, into a shard folder.

Sources, each read a chunk at a time where the format allows (never the whole set for HDF5 and
FITS folders):

- an ``.npz`` of arrays named as Keras' ``mnist.npz``: ``x_train``, ``y_train`` and optionally
  ``x_val``/``y_val`` and ``x_test``/``y_test``;
- an HDF5 file (``.h5``/``.hdf5``) with datasets of those names;
- a folder of FITS cut-outs, one subfolder per class (``lenses/*.fits``, ``nonlenses/*.fits``):
  labels are the subfolders in sorted order, and ``--val-fraction``/``--test-fraction`` of the
  files (drawn with ``--seed``) become the validation and test splits;
- a job spec (``jobs/lensfinder_cnn.yaml``, with ``--set``): the job's own ``load_data``, so a
  simulation is packed as the job would train on it.

The shards are written into ``DEST.partial`` and renamed to ``DEST`` at the end: an interrupted
pack leaves no folder that looks complete.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.data import shards as fmt
from harness.errors import UserError

CHUNK = 4096  # samples read from the source at a time
TEST_INFO = "test_info"  # per test-sample facts, kept beside the shards as test_info.npz
ARRAY_SPLITS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"),
                "test": ("x_test", "y_test")}


# ----------------------------------------------------------------------------- sources

def npz_source(path: Path) -> dict:
    """{split: (x, y)} from an npz; arrays are read when the split is packed."""
    try:
        archive = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not an .npz archive ({e})") from None
    return _named_arrays(path, archive, lambda name: archive[name])


def hdf5_source(path: Path) -> dict:
    try:
        import h5py
        handle = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not an HDF5 file ({e})") from None
    return _named_arrays(path, handle, lambda name: handle[name])  # read a slice at a time


def _named_arrays(path: Path, container, get) -> dict:
    found = {}
    for split, (x_name, y_name) in ARRAY_SPLITS.items():
        if x_name in container and y_name in container:
            x, y = get(x_name), get(y_name)
            if len(x) != len(y):
                raise UserError(f"{path}: {x_name} has {len(x)} samples but {y_name} {len(y)}")
            found[split] = (x, y)
        elif x_name in container or y_name in container:
            raise UserError(f"{path}: {x_name} and {y_name} go together; found only one")
    if "train" not in found:
        raise UserError(f"{path}: no x_train and y_train arrays (names as in Keras' mnist.npz; "
                        f"found {', '.join(sorted(container.keys())) or 'none'})")
    return found


def fits_source(folder: Path, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[dict, dict]:
    """{split: (FitsImages, labels)}: one subfolder per class, files split at random by seed."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.fits")))
    if len(classes) < 2:
        raise UserError(f"{folder}: a FITS source has one subfolder per class with .fits files "
                        f"in each (lenses/, nonlenses/); found {classes or 'none'}")
    files = [(p, label) for label, name in enumerate(classes)
             for p in sorted((folder / name).glob("*.fits"))]
    order = np.random.default_rng(seed).permutation(len(files))
    n_val, n_test = int(len(files) * val_fraction), int(len(files) * test_fraction)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
             "train": order[n_val + n_test:]}
    return {split: (FitsImages([files[i][0] for i in idx]),
                    np.array([files[i][1] for i in idx], np.int64))
            for split, idx in parts.items() if len(idx)}, {"classes": classes}


class FitsImages:
    """FITS cut-outs read when sliced: ``images[a:b]`` is a float32 stack."""

    def __init__(self, paths: list):
        self.paths = paths
        self.shape = (len(paths), *self._read(paths[0]).shape)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        from astropy.io import fits
        try:
            with fits.open(path, memmap=False) as hdus:
                data = next((h.data for h in hdus if h.data is not None), None)
        except OSError as e:
            raise UserError(f"{path}: not a FITS file ({e})") from None
        if data is None:
            raise UserError(f"{path}: no image in any HDU")
        return np.asarray(data, np.float32)

    def __getitem__(self, window: slice) -> np.ndarray:
        images = [self._read(p) for p in self.paths[window]]
        for p, image in zip(self.paths[window], images):
            if image.shape != self.shape[1:]:
                raise UserError(f"{p}: image {image.shape}, the others {self.shape[1:]}")
        return np.stack(images)


def job_source(spec_path: str, overrides: list) -> tuple[dict, dict]:
    from harness.spec.jobs import resolve_job
    from harness.spec.loader import load_spec
    spec = load_spec(spec_path, overrides)
    job = resolve_job(spec.job, Path(spec.spec_path).parent)
    origin = {"job": spec.job, "spec": spec.spec_path, "overrides": list(overrides)}
    if hasattr(job, "pack_source"):  # the job reads its own splits a slice at a time
        return job.pack_source(spec.data), origin
    if hasattr(job, "prepare_data"):
        job.prepare_data(spec.data)
    splits = job.load_data(spec.data, spec.training.seed)
    found = {"train": (splits.x_train, splits.y_train), "val": (splits.x_val, splits.y_val)}
    if splits.x_test is not None:
        found["test"] = (splits.x_test, splits.y_test)
    if splits.test_info is not None:
        found[TEST_INFO] = splits.test_info
    return found, origin


# ----------------------------------------------------------------------------- writing

def example(tf, x: np.ndarray, y: np.ndarray, sample_id: int) -> bytes:
    feature = {"x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()])),
               "y": tf.train.Feature(bytes_list=tf.train.BytesList(value=[y.tobytes()])),
               "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[sample_id]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def chunks(x, y, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(x), size):
        yield np.asarray(x[start:start + size]), np.asarray(y[start:start + size])


def write_split(tf, folder: Path, split: str, x, y, shard_bytes: int,
                x_dtype: np.dtype, y_dtype: np.dtype) -> list[fmt.ShardFile]:
    """The split's records in files of about ``shard_bytes``; temporary names until the count
    is known."""
    written, writer, current, first_id, sample_id = [], None, None, 0, 0
    counts: dict = {}

    def close():
        writer.close()
        written.append((current, first_id, sample_id - first_id, dict(counts)))

    for xs, ys in chunks(x, y):
        for xi, yi in zip(xs.astype(x_dtype, copy=False), ys.astype(y_dtype, copy=False)):
            if writer is None:
                current = folder / f"{split}-{len(written):05d}.partial"
                writer, first_id, counts = tf.io.TFRecordWriter(str(current)), sample_id, {}
            writer.write(example(tf, xi, yi, sample_id))
            if yi.ndim == 0 and np.issubdtype(yi.dtype, np.integer):
                counts[str(int(yi))] = counts.get(str(int(yi)), 0) + 1
            sample_id += 1
            if (sample_id - first_id) * (xi.nbytes + yi.nbytes + 40) >= shard_bytes:
                close()
                writer = None
        print(f"pack: {split}: {sample_id}/{len(x)} samples", file=sys.stderr, flush=True)
    if writer is not None:
        close()
    files = []
    for index, (path, first, samples, label_counts) in enumerate(written):
        final = folder / fmt.shard_name(split, index, len(written))
        path.rename(final)
        files.append(fmt.ShardFile(final.name, split, samples, first, final.stat().st_size,
                                   fmt.sha256_of(final), label_counts))
    return files


def pack(source: dict, origin: dict, dest: Path, shard_mb: float) -> fmt.ShardSet:
    import tensorflow as tf
    if dest.exists():
        raise UserError(f"{dest}: exists; pack into a new folder (or remove it)")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    x0, y0 = source["train"]
    x_dtype, y_dtype = np.dtype(x0.dtype), np.dtype(y0.dtype)
    sample = fmt.ArraySpec(tuple(x0.shape[1:]), x_dtype.name)
    label = fmt.ArraySpec(tuple(y0.shape[1:]), y_dtype.name)
    files = []
    try:
        for split in fmt.SPLITS:
            if split not in source:
                continue
            x, y = source[split]
            if tuple(x.shape[1:]) != sample.shape:
                raise UserError(f"{split}: samples of shape {tuple(x.shape[1:])}, train's "
                                f"{sample.shape}")
            files += write_split(tf, partial, split, x, y, int(shard_mb * 1e6), x_dtype, y_dtype)
        if TEST_INFO in source:  # read back by the run's evaluate (harness/runtime/inputs.py)
            np.savez(partial / f"{TEST_INFO}.npz", **source[TEST_INFO])
        shards = fmt.ShardSet(dest.resolve(), sample, label, tuple(files), origin,
                              time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        fmt.write_manifest(fmt.ShardSet(partial, sample, label, tuple(files), origin,
                                        shards.created))
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return fmt.read(dest)


def source_of(src: str, overrides: list, val_fraction: float, test_fraction: float,
              seed: int) -> tuple[dict, dict]:
    """The source's splits and what to record about it."""
    path = Path(src)
    origin = {"kind": "", "path": str(path.resolve())}
    if path.suffix in (".yaml", ".yml"):
        found, extra = job_source(src, overrides)
        return found, {**origin, "kind": "job", **extra}
    if overrides:
        raise UserError(f"--set: goes with a job spec as SRC, not {src}")
    if path.is_dir():
        found, extra = fits_source(path, val_fraction, test_fraction, seed)
        return found, {**origin, "kind": "fits", "seed": seed, **extra}
    if not path.is_file():
        raise UserError(f"{src}: no such file or folder")
    if path.suffix == ".npz":
        return npz_source(path), {**origin, "kind": "npz"}
    if path.suffix in (".h5", ".hdf5"):
        return hdf5_source(path), {**origin, "kind": "hdf5"}
    raise UserError(f"{src}: use an .npz, an .h5/.hdf5 file, a folder of FITS cut-outs (one "
                    "subfolder per class) or a job spec (.yaml)")


def main(src: str, dest: str, overrides: list, shard_mb: float, val_fraction: float,
         test_fraction: float, seed: int) -> int:
    if not 0.01 <= shard_mb <= 4000:
        raise UserError(f"--shard-mb {shard_mb}: use 0.01..4000 (100-500 MB suits parallel "
                        "reads; smaller, for a set that must still give every rank a file)")
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"{name} {value}: use a fraction in [0, 1)")
    source, origin = source_of(src, overrides, val_fraction, test_fraction, seed)
    started = time.monotonic()
    shards = pack(source, origin, Path(dest), shard_mb)
    print("\n".join(fmt.describe(shards)))
    print(f"pack: done in {time.monotonic() - started:.0f} s; train on it with "
          f"--set data.path={shards.folder}")
    return 0


def inspect(folder: str, full: bool) -> int:
    shards = fmt.read(folder)
    print("\n".join(fmt.describe(shards)))
    fmt.check(shards, full=full)
    print("check: every file present with its recorded size"
          + (" and SHA-256" if full else " (--full also checks every SHA-256)"))
    return 0

