"""The on-disk layout of an index directory, written so that a crash at any moment loses
nothing already committed and a reader never sees half a file.

    INDEX/
      index.json                    the commit: model, fingerprint, dim, count, index type, recall,
                                    and the names of the two files below
      rows-BUILD.parquet            one row per image, in index order: path, size, mtime (ns),
                                    width, height, caption, ood (far from the model's training
                                    data; null without a profile or in rows written before it),
                                    and where its vector is (shard, offset)
      index-BUILD.faiss             the faiss index over those rows
      shards/gGEN-rRANK-SEQ.npy     (n, dim) float32 L2-normalised embeddings
      shards/gGEN-rRANK-SEQ.parquet the metadata of those n rows; written after the .npy, so a
                                    shard exists only once its parquet does

Every file is written to ``NAME.tmp-PID``, flushed, fsynced and renamed into place; a
``.npy`` without its parquet (a crash between the two) and leftover ``.tmp-*`` files are
removed before the next run writes. ``index.json`` is renamed last, so it always names a
complete rows file and faiss index.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SHARD_RE = re.compile(r"^g(\d{5})-r(\d{3})-(\d{6})$")
META_COLUMNS = ("path", "size", "mtime", "width", "height", "caption", "ood")


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through ``write(file)`` to a temporary name, fsync, rename into place."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_table(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    atomic_write(path, lambda f: pq.write_table(table, f))


def read_table(path: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def meta_columns(rows: list[dict]) -> dict:
    import pyarrow as pa

    types = {"path": pa.string(), "size": pa.int64(), "mtime": pa.int64(), "width": pa.int32(),
             "height": pa.int32(), "caption": pa.string(), "ood": pa.bool_()}
    return {c: pa.array([r.get(c) for r in rows], type=types[c]) for c in META_COLUMNS}  # shards before "ood": null


@dataclass(frozen=True)
class Shard:
    name: str  # gGEN-rRANK-SEQ
    folder: Path

    @property
    def npy(self) -> Path:
        return self.folder / f"{self.name}.npy"

    @property
    def parquet(self) -> Path:
        return self.folder / f"{self.name}.parquet"

    @property
    def generation(self) -> int:
        return int(SHARD_RE.match(self.name).group(1))

    def vectors(self) -> np.ndarray:
        return np.load(self.npy, mmap_mode="r")

    def rows(self) -> dict:
        return read_table(self.parquet)


def shard_dir(index_dir: Path) -> Path:
    return Path(index_dir) / "shards"


def committed_shards(index_dir: Path) -> list[Shard]:
    """Shards whose parquet (written last) exists, in name order."""
    folder = shard_dir(index_dir)
    if not folder.is_dir():
        return []
    names = sorted(p.stem for p in folder.glob("*.parquet") if SHARD_RE.match(p.stem))
    return [Shard(n, folder) for n in names if (folder / f"{n}.npy").is_file()]


def remove_partial(index_dir: Path) -> int:
    """Delete temporary files and vectors whose metadata never landed; how many were removed."""
    removed = 0
    for folder in (Path(index_dir), shard_dir(index_dir)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            orphan = p.suffix == ".npy" and not p.with_suffix(".parquet").exists()
            if ".tmp-" in p.name or orphan:
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def write_shard(shard: Shard, vectors: np.ndarray, rows: list[dict]) -> None:
    """Vectors first, then the metadata that commits them."""
    assert vectors.shape[0] == len(rows), (vectors.shape, len(rows))
    shard.folder.mkdir(parents=True, exist_ok=True)
    atomic_write(shard.npy, lambda f: np.save(f, np.ascontiguousarray(vectors, dtype=np.float32)))
    write_table(shard.parquet, meta_columns(rows))
