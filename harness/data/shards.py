"""The shard format: a folder of TFRecord files and the manifest that describes them.

A shard folder holds, per split (``train``, ``val``, ``test``), files named
``<split>-00003-of-00012.tfrecord`` of about ``--shard-mb`` each, and ``shards.json``:

- the sample arrays' per-sample shape and dtype (``x`` and ``y``);
- per file: its split, sample count, first sample id, byte size, SHA-256 and label counts;
- what it was made from (source kind and path, the command, when).

Each record is a ``tf.train.Example`` with three features: ``x`` and ``y`` (the raw bytes of
one sample, in the manifest's dtype and shape) and ``id`` (the sample's index in its split,
so a test can say which samples an epoch saw).  TFRecord is read by tf.data in C++ threads,
outside the GIL; the raw bytes keep uint8 images at one byte a pixel.

This module needs no TensorFlow: reading and checking a manifest is plain Python.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from harness.errors import UserError
from harness.files import SHARD_MANIFEST as MANIFEST, atomic_write_text

VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple  # one sample's shape
    dtype: str

    @property
    def sample_bytes(self) -> int:
        import numpy as np
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ShardFile:
    name: str  # relative to the folder
    split: str
    samples: int
    first_id: int  # the split's index of its first sample
    bytes: int
    sha256: str
    label_counts: dict = field(default_factory=dict)  # {label: count}, for integer labels


@dataclass(frozen=True)
class ShardSet:
    folder: Path
    x: ArraySpec
    y: ArraySpec
    files: tuple  # ShardFile
    source: dict  # {"kind": "npz"|"hdf5"|"fits"|"job", "path": ..., ...}
    created: str = ""

    def split(self, name: str) -> tuple:
        return tuple(f for f in self.files if f.split == name)

    def samples(self, split: str) -> int:
        return sum(f.samples for f in self.split(split))

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.split(s)]

    @property
    def digest(self) -> str:
        """One hash for the whole set: its files' hashes in order (the data's identity)."""
        return hashlib.sha256("".join(f.sha256 for f in self.files).encode()).hexdigest()[:16]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def is_shard_folder(path) -> bool:
    return bool(path) and (Path(path) / MANIFEST).is_file()


def write_manifest(shards: ShardSet) -> Path:
    record = {"version": VERSION, "created": shards.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "x": {"shape": list(shards.x.shape), "dtype": shards.x.dtype},
              "y": {"shape": list(shards.y.shape), "dtype": shards.y.dtype},
              "source": shards.source,
              "splits": {s: shards.samples(s) for s in shards.splits},
              "files": [asdict(f) for f in shards.files]}
    path = shards.folder / MANIFEST
    atomic_write_text(path, json.dumps(record, indent=1))
    return path


def read(folder) -> ShardSet:
    """The manifest of a shard folder; one line naming what is wrong when it cannot be read."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        record = json.loads(path.read_text())
        if record.get("version") != VERSION:
            raise ValueError(f"version {record.get('version')!r}, this harness reads {VERSION}")
        files = tuple(ShardFile(**{**f, "label_counts": {str(k): int(v) for k, v in
                                                         f.get("label_counts", {}).items()}})
                      for f in record["files"])
        return ShardSet(folder.resolve(), ArraySpec(tuple(record["x"]["shape"]), record["x"]["dtype"]),
                        ArraySpec(tuple(record["y"]["shape"]), record["y"]["dtype"]), files,
                        record.get("source", {}), record.get("created", ""))
    except FileNotFoundError:
        raise UserError(f"{path}: no shard manifest here; make one with "
                        "`harness data pack SRC DEST`") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a shard manifest this harness reads ({e})") from None


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check(shards: ShardSet, splits: Optional[Sequence[str]] = None, full: bool = False) -> None:
    """Every file of ``splits`` is there with its recorded size (and, with ``full``, its
    SHA-256): one line naming the first file that is not (exit 2), before anything trains."""
    for f in shards.files:
        if splits is not None and f.split not in splits:
            continue
        path = shards.folder / f.name
        if not path.is_file():
            raise UserError(f"{path}: missing (the manifest {shards.folder / MANIFEST} lists "
                            f"it with {f.samples} samples)")
        size = path.stat().st_size
        if size != f.bytes:
            word = "truncated" if size < f.bytes else "longer than recorded"
            raise UserError(f"{path}: {word}: {size} bytes, the manifest says {f.bytes}")
        if full and sha256_of(path) != f.sha256:
            raise UserError(f"{path}: SHA-256 {sha256_of(path)[:16]}... differs from the "
                            f"manifest's {f.sha256[:16]}...: the file changed after packing")


def count_records(path: Path) -> int:
    """Records in a TFRecord file, from their length headers alone (seeks past each payload);
    a file that ends inside a record is reported as truncated."""
    import struct
    size, count, offset = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)  # uint64 length, uint32 masked CRC of the length
            if len(header) < 12:
                raise UserError(f"{path}: truncated inside record {count}")
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4
            if offset > size:
                raise UserError(f"{path}: truncated inside record {count}")
            f.seek(offset)
            count += 1
    return count


def verify(shards: ShardSet, splits: Optional[Sequence[str]] = None,
           cache: Optional[Path] = None) -> int:
    """``check`` with every file's SHA-256 and record count, before a job trains: files already
    verified with the same size and modification time (``cache``, a JSON file) are not read
    again.  How many files were read."""
    check(shards, splits)
    known = _read_cache(cache)
    read = 0
    for f in shards.files:
        if splits is not None and f.split not in splits:
            continue
        path = shards.folder / f.name
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, f.sha256]
        if known.get(str(path)) == stamp:
            continue
        if sha256_of(path) != f.sha256:
            raise UserError(f"{path}: SHA-256 differs from the manifest's {f.sha256[:16]}...: "
                            "the file changed after packing")
        records = count_records(path)
        if records != f.samples:
            raise UserError(f"{path}: {records} records, the manifest says {f.samples}")
        known[str(path)] = stamp
        read += 1
    if cache is not None and read:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(known))
    return read


def _read_cache(cache: Optional[Path]) -> dict:
    try:
        return json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):
        return {}


def check_sample_shape(shards: ShardSet, input_shape: tuple, what: str) -> None:
    """The model's input takes the shards' samples: one line before training when it does not."""
    expected = tuple(d for d in input_shape[1:])
    if len(expected) != len(shards.x.shape) or any(
            e is not None and e != s for e, s in zip(expected, shards.x.shape)):
        raise UserError(f"{shards.folder}: samples of shape {shards.x.shape} do not fit {what}'s "
                        f"input {tuple(input_shape[1:])}")


def describe(shards: ShardSet) -> list[str]:
    """The manifest as `harness data inspect` prints it."""
    lines = [f"{shards.folder}: {len(shards.files)} shard file(s), digest {shards.digest}",
             f"  samples: x {shards.x.shape} {shards.x.dtype}, y {shards.y.shape} {shards.y.dtype}",
             "  source: " + ", ".join(f"{k}={v}" for k, v in shards.source.items()),
             f"  created: {shards.created}"]
    for split in shards.splits:
        files = shards.split(split)
        size = sum(f.bytes for f in files)
        counts: dict = {}
        for f in files:
            for label, n in f.label_counts.items():
                counts[label] = counts.get(label, 0) + n
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: kv[0]))
        lines.append(f"  {split}: {shards.samples(split)} samples in {len(files)} file(s), "
                     f"{size / 1e6:.1f} MB" + (f"; labels {labels}" if labels else ""))
    return lines
