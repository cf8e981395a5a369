"""``vlm.index.open(INDEX).search(text=..., image=..., k=...)``: ranked images for a query.

    >>> from vlm.index import open as open_index
    >>> idx = open_index("photos.index")
    >>> idx.search(text="a dog on a beach", k=5)      # [Hit(rank=1, path=..., score=...), ...]
    >>> idx.search(text=["a cat", "a dog"], k=5)      # one list per query
    >>> idx.search(image="query.jpg", k=5)

Text goes through the text tower and images through the image tower of the model that built
the index (named in ``index.json``); another model is refused by its weights' fingerprint. The
model loads on the first text or image query; ``search_vectors`` needs none.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from vlm.errors import ModelError, UsageError, VlmError, first_line


class IndexFormatError(VlmError):
    """An index directory that is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    path: str  # the indexed image (absolute path, or SOURCE[row] for dataset rows)
    score: float  # cosine similarity
    ood: Optional[bool] = None  # far from the model's training data (vlm.trust.ood); None: not known

    def to_dict(self) -> dict:
        out = {"rank": self.rank, "path": self.path, "score": round(self.score, 6)}
        if self.ood is not None:
            out["ood"] = self.ood
        return out


class Index:
    def __init__(self, path: Path, info: dict, faiss_index, rows: dict, pipeline=None, model: Optional[str] = None,
                 device: Optional[str] = None) -> None:
        self.path = path
        self.info = info
        self.faiss = faiss_index
        self.rows = rows  # column -> list, in index order
        self.paths: list[str] = rows["path"]
        self.ood: list = rows.get("ood") or [None] * len(self.paths)  # indexes built before the flag: None
        self._row_of = {p: n for n, p in enumerate(self.paths)}
        self._pipeline = pipeline
        self._model, self._device = model, device
        self._lock = threading.Lock()  # one model call at a time (the server is threaded)

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, path: str) -> Optional[int]:
        return self._row_of.get(path)

    # -- the model ----------------------------------------------------------------------------
    @property
    def pipeline(self):
        if self._pipeline is None:
            import vlm.api

            pipe = vlm.api.load(self._model or self.info["model"], device=self._device)
            self._check_weights(pipe)
            self._pipeline = pipe
        return self._pipeline

    def _check_weights(self, pipe) -> None:
        """ModelError (one line) unless ``pipe`` holds the weights this index was built with."""
        from vlm.io.fingerprint import weights_fingerprint

        if weights_fingerprint(pipe) != self.info["fingerprint"]:
            name = getattr(pipe, "name", None) or self._model or self.info["model"]
            raise ModelError(f"{self.path}: built with model {self.info['model']!r} (fingerprint "
                             f"{self.info['fingerprint']}); model {name!r} has other weights, so its "
                             f"embeddings do not match the index")

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.pipeline.encode_texts(list(texts)).cpu().numpy()

    def encode_image(self, images: Sequence) -> np.ndarray:
        with self._lock:
            return self.pipeline.encode_images(list(images)).cpu().numpy()

    def vectors_of(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), dim) the stored embeddings of these rows (IVF-PQ: as its codes give them back)."""
        import faiss

        ids = np.asarray(rows, dtype=np.int64)
        with self._lock:
            try:
                return self.faiss.reconstruct_batch(ids)
            except RuntimeError:  # an IVF index keeps no id -> list map until asked for one
                faiss.extract_index_ivf(self.faiss).make_direct_map()
                return self.faiss.reconstruct_batch(ids)

    # -- searching ----------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k hits for each row of ``queries`` (n, dim), L2-normalised."""
        _check_k(k)
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.info["dim"]:
            raise UsageError(f"query vectors have {q.shape[1]} dimensions; the index has {self.info['dim']}")
        scores, ids = self.faiss.search(q, min(k, len(self)))
        return [[Hit(r + 1, self.paths[j], float(s), self.ood[j]) for r, (s, j) in enumerate(zip(srow, jrow)) if j >= 0]
                for srow, jrow in zip(scores, ids)]

    def search(self, text: Union[str, Sequence[str], None] = None, image=None, k: int = 10):
        """Hits for one query (a list of Hit), or one list per query when given a list."""
        _check_k(k)
        if (text is None) == (image is None):
            raise UsageError("give either text or image queries (one kind per call)")
        single = isinstance(text, str) or (image is not None and not isinstance(image, (list, tuple)))
        queries = [text] if isinstance(text, str) else list(text) if text is not None else \
            [image] if single else list(image)
        if not queries:
            raise UsageError("no query given")
        if text is not None:
            for t in queries:
                if not isinstance(t, str) or not t.strip():
                    raise UsageError(f"text query {t!r}: empty; give some words to search for")
            vectors = self.encode_text(queries)
        else:
            vectors = self.encode_image(queries)
        hits = self.search_vectors(vectors, k)
        return hits[0] if single else hits


def _check_k(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UsageError(f"k={k!r}: must be a whole number of at least 1")


def open_index(path: str | os.PathLike, model: Optional[str] = None, device: Optional[str] = None,
               pipeline=None) -> Index:
    """Open an index directory; IndexFormatError (one line naming the file) if it is not one.
    ``model``: load this model instead of the one named in index.json (it must have the same weights)."""
    from vlm.index import ann
    from vlm.index.store import read_table

    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path}: no such index directory (build one with `vlm index`)")
    meta = path / "index.json"
    if not meta.is_file():
        partial = (path / "shards").is_dir()
        raise IndexFormatError(f"{path}: no index.json" + (" (an interrupted build: run the same `vlm index` "
                                                           "command again)" if partial else
                                                           " (not an index directory)"))
    try:
        info = json.loads(meta.read_text())
        for key in ("model", "fingerprint", "dim", "count", "rows", "faiss", "index"):
            if key not in info:
                raise ValueError(f"missing key {key!r}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{meta}: corrupt ({first_line(exc)})") from None
    try:
        rows = read_table(path / info["rows"])
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise IndexFormatError(f"{path / info['rows']}: unreadable ({type(exc).__name__}: "
                               f"{first_line(exc)})") from None
    try:
        index = ann.from_bytes((path / info["faiss"]).read_bytes())
    except (OSError, RuntimeError) as exc:
        raise IndexFormatError(f"{path / info['faiss']}: unreadable faiss index "
                               f"({str(exc).strip().splitlines()[-1][:200] if str(exc) else type(exc).__name__})") from None
    if index.ntotal != info["count"] or len(rows.get("path", [])) != info["count"] or index.d != info["dim"]:
        raise IndexFormatError(f"{path}: index.json says {info['count']} vectors of {info['dim']} dimensions; "
                               f"found {index.ntotal} x {index.d} in the faiss index and "
                               f"{len(rows.get('path', []))} rows")
    ann.apply_params(index, info["index"])
    idx = Index(path, info, index, rows, pipeline=pipeline, model=model, device=device)
    if pipeline is not None:
        idx._check_weights(pipeline)  # a pipeline passed in must hold the index's weights too
    if model is not None or pipeline is not None:
        idx.pipeline  # check the model now, not on the first query
    return idx
