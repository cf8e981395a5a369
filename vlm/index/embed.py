"""Embedding images for the index: DataLoader workers decode and preprocess while the model
runs, and a writer thread saves finished shards while the next batches compute.

``embed_records(pipe, records, ...)`` yields nothing; it writes shards
``gGEN-rRANK-SEQ`` of ``shard_size`` rows through ``vlm.index.store.write_shard`` and returns
the images it could not read as ``"PATH: reason"`` lines. Run through ``vlm.index.build``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vlm.errors import first_line
from vlm.index.sources import Record
from vlm.index.store import Shard, write_shard


class ImageRecords(torch.utils.data.Dataset):
    """Decodes and preprocesses one record per item (in a DataLoader worker)."""

    def __init__(self, records: Sequence[Record], datasets: dict, preprocess_cfg) -> None:
        self.records = list(records)
        self.datasets = datasets
        self.cfg = preprocess_cfg

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: Record):
        from vlm.io.images import ImageLoadError, load_image

        if rec.file is not None:
            return load_image(rec.file)
        name = rec.key[: rec.key.rindex("[")]
        item = self.datasets[name][rec.row]
        if item is None:
            raise ImageLoadError(rec.key, "row has no decodable image")
        return item["image"]

    def __getitem__(self, i: int) -> dict:
        from vlm.io.images import ImageLoadError, preprocess

        rec = self.records[i]
        try:
            img = self._load(rec)
            return {"i": i, "x": preprocess(img, self.cfg), "width": img.width, "height": img.height}
        except ImageLoadError as exc:
            return {"i": i, "error": exc.reason if hasattr(exc, "reason") else str(exc)}
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            return {"i": i, "error": first_line(exc)}


def _collate(items: list[dict]) -> dict:
    good = [it for it in items if "x" in it]
    return {
        "x": torch.stack([it["x"] for it in good]) if good else None,
        "ok": [(it["i"], it["width"], it["height"]) for it in good],
        "errors": [(it["i"], it["error"]) for it in items if "error" in it],
    }


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


@dataclass
class ShardWriter:
    """Collects embedded rows and writes full shards on a background thread."""

    folder: Path
    prefix: str  # gGEN-rRANK
    shard_size: int
    seq: int = 0
    _rows: list = field(default_factory=list)
    _vecs: list = field(default_factory=list)
    _error: Optional[BaseException] = None

    def __post_init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # bounds the rows held in memory
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    write_shard(*job)
                except BaseException as exc:  # re-raised on the main thread
                    self._error = exc

    def add(self, vectors: np.ndarray, rows: list[dict]) -> None:
        for v, r in zip(vectors, rows):
            self._vecs.append(v)
            self._rows.append(r)
            if len(self._rows) == self.shard_size:
                self._flush()
        if self._error is not None:
            raise self._error

    def _flush(self) -> None:
        if self._rows:
            shard = Shard(f"{self.prefix}-{self.seq:06d}", self.folder)
            self._queue.put((shard, np.stack(self._vecs), self._rows))
            self.seq += 1
            self._rows, self._vecs = [], []

    def close(self) -> None:
        self._flush()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def embed_records(pipe, records: Sequence[Record], datasets: dict, writer: ShardWriter, batch_size: int,
                  workers: int, captions: bool = False, progress: bool = False) -> tuple[list[str], float]:
    """Embed ``records`` into shards at the pipeline's precision; (["PATH: reason" per unreadable image], seconds)."""
    from vlm.runtime.precision import input_dtype

    loader = torch.utils.data.DataLoader(
        ImageRecords(records, datasets, pipe.preprocess_cfg), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)
    gen_cfg = pipe.generation_config() if captions and pipe.can_caption else None
    bar = None
    if progress and records:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="img", desc="vlm index", file=sys.stderr, dynamic_ncols=True)
    bad: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            bad += [f"{records[i].key}: {reason}" for i, reason in batch["errors"]]
            if batch["x"] is not None:
                x = batch["x"].to(pipe.device, input_dtype(pipe.model))  # bfloat16 for a bf16 model
                emb = pipe.model.encode_image(x, normalize=False)
                emb = torch.nn.functional.normalize(emb.float(), dim=-1)  # normalised in float32
                vectors = emb.cpu().numpy()  # (B, E)
                texts = _captions(pipe, x, gen_cfg) if gen_cfg is not None else [None] * len(vectors)
                notice = getattr(pipe, "ood_notice", None)  # counted by the build over the whole index
                far = notice.check.far(pipe.model, x).tolist() if notice is not None else [None] * len(vectors)
                rows = []
                for (i, w, h), text, ood in zip(batch["ok"], texts, far):
                    rec = records[i]
                    rows.append({"path": rec.key, "size": rec.size, "mtime": rec.mtime, "width": w, "height": h,
                                 "caption": rec.caption if rec.caption is not None else text, "ood": ood})
                writer.add(vectors, rows)
            if bar is not None:
                bar.update(len(batch["ok"]) + len(batch["errors"]))
    writer.close()
    if bar is not None:
        bar.close()
    return bad, time.perf_counter() - start


def _captions(pipe, x: torch.Tensor, cfg) -> list[str]:
    from vlm.generation.decode import caption_texts

    return caption_texts(pipe.model, x, pipe.tokenizer, cfg, lexicon=pipe.lexicon)
