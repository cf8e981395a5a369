"""``vlm.index.build`` (this module is ``vlm.index.builder``): embed a collection into an index directory, incrementally and crash-safe.

    >>> from vlm.index import build
    >>> report = build(["photos/"], "photos.index")        # again later: only new/changed files
    >>> report.embedded, report.reused, report.count

A run (1) gathers the sources' images (``vlm.index.sources``), (2) keeps every committed row
whose file still has the same size, mtime and caption, (3) embeds the rest into new shards
(``vlm.index.embed``; each Accelerate process its own share and shards), and (4) on the main
process writes the rows of all live images sorted by path, a faiss index over them
(``vlm.index.ann``) and ``index.json`` (``vlm.index.store`` describes the layout). Rows of deleted
files drop out in (4); shards left with no live row are deleted.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vlm.io.fingerprint import weights_fingerprint
from vlm.errors import InvalidOption, ModelError, UsageError
from vlm.index import ann
from vlm.index.store import (Shard, committed_shards, read_table, remove_partial, shard_dir, write_json,
                             write_table)

FORMAT_VERSION = 1


@dataclass
class BuildReport:
    count: int  # rows in the index
    embedded: int  # images embedded by this run (all processes)
    reused: int  # rows kept from earlier runs
    skipped: list[str] = field(default_factory=list)  # "PATH: reason" for unreadable images
    source_errors: list[str] = field(default_factory=list)  # "SOURCE: reason" for sources with no image
    seconds: float = 0.0  # embedding time of this process
    index: dict = field(default_factory=dict)  # what index.json says about the faiss index
    far: Optional[int] = None  # rows flagged far from the model's training data (None: the model has no profile)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class _Dist:
    """Rank, world size and barriers: Accelerate's PartialState under ``accelerate launch``, else trivial."""

    def __init__(self) -> None:
        self.state = None
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1:
            import torch
            from accelerate import PartialState

            cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or \
                not torch.cuda.is_available()
            self.state = PartialState(cpu=cpu)
            if self.state.num_processes < launched:
                raise UsageError(f"WORLD_SIZE={launched}: {launched} processes were launched but Accelerate "
                                 f"joined {self.state.num_processes}")
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        self.is_main = self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, items: list) -> list:
        if self.state is None:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))


def _live_rows(out: Path, current: dict) -> dict:
    """key -> (shard, offset, row) for committed rows that still match their source; the last write wins."""
    live: dict = {}
    for shard in committed_shards(out):
        table = shard.rows()
        for off, key in enumerate(table["path"]):
            rec = current.get(key)
            row = {c: table[c][off] for c in table}
            if rec is not None and rec.size == row["size"] and rec.mtime == row["mtime"] and \
                    (rec.caption is None or rec.caption == row["caption"]):
                live[key] = (shard.name, off, row)
            else:
                live.pop(key, None)  # a later row of a changed file replaces earlier ones
    return live


def _check_model(out: Path, name: str, fp: str, dist: _Dist) -> None:
    marker = shard_dir(out) / "model.json"
    if marker.is_file():
        import json

        try:
            built = json.loads(marker.read_text())
        except ValueError:
            built = {}
        if built.get("fingerprint") != fp:
            raise ModelError(f"{out}: built with model {built.get('model')!r} (fingerprint "
                             f"{built.get('fingerprint')}); model {name!r} has other weights "
                             f"(fingerprint {fp}): index into a new directory")
    elif dist.is_main:
        shard_dir(out).mkdir(parents=True, exist_ok=True)
        write_json(marker, {"model": name, "fingerprint": fp})


def build(sources: Sequence[str], out: str | os.PathLike, model: Optional[str] = None, *,
          batch_size: int = 32, device: Optional[str] = None, workers: Optional[int] = None,
          captions: bool = False, index_type: str = "auto", memory_budget: int = ann.DEFAULT_BUDGET,
          shard_size: int = 4096, progress: bool = False, precision: Optional[str] = None,
          pipeline=None) -> BuildReport:
    """Index ``sources`` into ``out`` (see the module docstring). UsageError when no source has
    an image or an option is out of range; ModelError when ``out`` was built with other weights.

    ``precision`` (fp32, bf16, int8: ``vlm.runtime.precision``) is that of the model loaded here
    (default fp32); a given ``pipeline`` runs at its own, and ``precision`` must then be None or it."""
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size}: must be at least 1")
    if shard_size < 1:
        raise UsageError(f"shard size {shard_size}: must be at least 1")
    if index_type not in ann.INDEX_TYPES:
        raise UsageError(f"index type {index_type!r}: must be one of {', '.join(ann.INDEX_TYPES)}")
    if pipeline is not None and precision not in (None, pipeline.precision):
        raise InvalidOption("precision", precision, f"the given pipeline runs at {pipeline.precision}")
    if pipeline is None:
        from vlm.api import resolve_device
        from vlm.runtime.precision import check_precision

        check_precision(precision or "fp32", resolve_device(device))  # before any source is read
    if workers is not None and workers < 0:
        raise UsageError(f"workers {workers}: must be 0 or more")
    from vlm.index.sources import gather

    gathered = gather(list(sources))
    if not gathered.records:
        raise UsageError("nothing to index: " + "; ".join(gathered.errors or ["the sources hold no images"]))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    dist = _Dist()
    if pipeline is None:
        import vlm.api

        pipeline = vlm.api.load(model, device=device, precision=precision or "fp32")
    fp = weights_fingerprint(pipeline)  # of the float32 weights: an index may be updated at another precision
    precision = pipeline.precision
    name = model or pipeline.name
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    _check_model(out, name, fp, dist)

    current = {r.key: r for r in gathered.records}
    live = _live_rows(out, current)
    todo = [r for r in gathered.records if r.key not in live]
    gens = [Shard(s.name, s.folder).generation for s in committed_shards(out)]
    gen = max(gens, default=0) + 1
    dist.barrier()  # everyone has read the committed state before the main process tidies up
    if dist.is_main:
        remove_partial(out)
    dist.barrier()

    from vlm.index.embed import ShardWriter, embed_records

    if workers is None:
        workers = min(4, max(1, (os.cpu_count() or 2) - 1))
    mine = todo[dist.rank::dist.world]
    writer = ShardWriter(shard_dir(out), f"g{gen:05d}-r{dist.rank:03d}", shard_size)
    bad, seconds = embed_records(pipeline, mine, gathered.datasets, writer, batch_size,
                                 workers if len(mine) > batch_size else 0, captions, progress and dist.is_main)
    bad = dist.gather(bad)
    dist.barrier()
    report = BuildReport(count=0, embedded=len(todo) - len(bad), reused=len(live), skipped=sorted(bad),
                         source_errors=gathered.errors, seconds=seconds)
    if dist.is_main:
        report.count, report.index, flags = _commit(out, current, name, fp, index_type, memory_budget, precision)
        notice = getattr(pipeline, "ood_notice", None)
        if notice is not None:
            report.far = _ood_notice(notice, flags)
    else:
        report.count = len(live) + report.embedded
    dist.barrier()
    return report


def _ood_notice(notice, flags: list) -> int:
    """Rows flagged far from the training data; one OutOfDistributionWarning "N of M images ..." for them.
    Rows written before the flag existed (null) count as not flagged and are named in ``M``."""
    import warnings

    from vlm.trust.ood import OutOfDistributionWarning

    far = sum(bool(f) for f in flags)
    if far:
        warnings.warn(OutOfDistributionWarning(notice.name, notice.check.about, far, len(flags)), stacklevel=3)
    return far


def _commit(out: Path, current: dict, name: str, fp: str, index_type: str, budget: int,
            precision: str) -> tuple[int, dict, list]:
    """Write rows, faiss index and index.json for every live row; delete shards nobody uses.
    Returns (rows, faiss info, the rows' ood flags)."""
    live = _live_rows(out, current)
    keys = sorted(live)
    if not keys:
        raise UsageError(f"nothing to index: no image of the sources could be read")
    by_shard: dict = {}
    for n, key in enumerate(keys):
        shard, off, _ = live[key]
        by_shard.setdefault(shard, []).append((n, off))
    dim = None
    vectors = None
    for shard in committed_shards(out):
        if shard.name not in by_shard:
            continue
        vec = shard.vectors()
        if vectors is None:
            dim = vec.shape[1]
            vectors = np.empty((len(keys), dim), dtype=np.float32)
        rows, offs = zip(*by_shard[shard.name])
        vectors[list(rows)] = vec[list(offs)]
    index, info = ann.build(vectors, index_type, budget)
    build_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    rows_name, index_name = f"rows-{build_id}.parquet", f"index-{build_id}.faiss"
    meta = [live[k][2] for k in keys]
    columns = {"shard": [live[k][0] for k in keys]}
    columns["offset"] = [live[k][1] for k in keys]
    from vlm.index.store import atomic_write, meta_columns

    import pyarrow as pa

    table = meta_columns(meta)
    table["shard"] = pa.array(columns["shard"], type=pa.string())
    table["offset"] = pa.array(columns["offset"], type=pa.int64())
    write_table(out / rows_name, table)
    data = ann.to_bytes(index)
    atomic_write(out / index_name, lambda f: f.write(data))
    write_json(out / "index.json", {
        "format": FORMAT_VERSION, "model": name, "fingerprint": fp, "dim": int(dim), "count": len(keys),
        "precision": precision,
        "metric": "inner_product (cosine: vectors are L2-normalised)", "index": info,
        "rows": rows_name, "faiss": index_name, "shards": sorted(by_shard),
    })
    for p in out.iterdir():  # the files of earlier builds
        if p.name.startswith(("rows-", "index-")) and p.name not in (rows_name, index_name):
            p.unlink(missing_ok=True)
    for shard in committed_shards(out):
        if shard.name not in by_shard:
            shard.parquet.unlink(missing_ok=True)  # metadata first: the shard stops existing
            shard.npy.unlink(missing_ok=True)
    return len(keys), info, [m.get("ood") for m in meta]
