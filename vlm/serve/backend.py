"""The serve backend: one loaded model and any number of opened indexes; no HTTP here.

    backend = Backend.load(model="ckpt_dir", indexes=["photos.index"])
    backend.run_batch("caption", [CaptionRequest, ...])   # -> one JSON-able dict per request
    backend.search(SearchRequest(...))                    # -> {"query", "index", "results"}

``run_batch`` runs requests of one ``batch_key()`` as one model batch (all their images together)
and splits the answers back per request; a request alone gives the same answer. Requests are
built by ``vlm.serve.requests`` (already validated). The model is used by one thread at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from vlm.errors import ModelError
from vlm.serve.requests import RequestError, SearchRequest


class Backend:
    def __init__(self, pipeline, indexes: dict):
        self.pipeline = pipeline
        self.indexes = indexes  # name -> vlm.index.search.Index
        self.lock = threading.Lock()  # one model call at a time

    @classmethod
    def load(cls, model: Optional[str] = None, indexes: Sequence[str] = (), device: Optional[str] = None,
             precision: str = "fp32"):
        """Load ``model`` (default: the model named by the first index) at ``precision`` (fp32, bf16,
        int8: ``vlm.runtime.precision``) and open ``indexes`` with it;
        ModelError (one line) for an index built with other weights."""
        import vlm.api
        from vlm.index.search import open_index

        if model is None and indexes:
            from vlm.index.search import open_index as _open

            model = _open(indexes[0]).info["model"]
        pipe = vlm.api.load(model, device=device, precision=precision)
        opened = {}
        for path in indexes:
            name = Path(path).name
            if name in opened:
                raise ModelError(f"{path}: two indexes named {name!r}")
            opened[name] = open_index(path, pipeline=pipe)  # checks the fingerprint
        return cls(pipe, opened)

    # -- batched model operations ---------------------------------------------------------------
    def run_batch(self, kind: str, requests: list) -> list:
        """Answers for requests of one kind and one ``batch_key()``, in order."""
        return {"caption": self._caption, "classify": self._classify, "embed": self._embed}[kind](requests)

    def _images(self, requests) -> list:
        return [img for r in requests for img in r.images]

    def _split(self, requests, flat: list) -> list[list]:
        out, start = [], 0
        for r in requests:
            out.append(flat[start:start + len(r.images)])
            start += len(r.images)
        return out

    def _caption(self, requests) -> list:
        with self.lock:
            captions = self.pipeline.caption(self._images(requests), requests[0].config)
        return [{"results": [{"image": n, "caption": c} for n, c in zip(r.names, part)]}
                for r, part in zip(requests, self._split(requests, captions))]

    def _classify(self, requests) -> list:
        first = requests[0]
        top_k = max(r.top_k for r in requests)
        with self.lock:
            embeds = self.pipeline.label_embeddings(list(first.labels), first.templates and list(first.templates))
            tops = self.pipeline.classify(self._images(requests), list(first.labels), top_k=top_k,
                                          label_embeds=embeds)
        return [{"results": [{"image": n, "top": [{"label": lab, "prob": p} for lab, p in top[:r.top_k]]}
                             for n, top in zip(r.names, part)]}
                for r, part in zip(requests, self._split(requests, tops))]

    def _embed(self, requests) -> list:
        images, texts = self._images(requests), [t for r in requests for t in r.texts]
        with self.lock:
            img = self.pipeline.encode_images(images).cpu().numpy() if images else np.zeros((0, 0))
            txt = self.pipeline.encode_texts(texts).cpu().numpy() if texts else np.zeros((0, 0))
        out, i, t = [], 0, 0
        for r in requests:
            out.append({"dim": self.dim,
                        "images": [{"image": n, "embedding": img[i + j].tolist()} for j, n in enumerate(r.names)],
                        "texts": [{"text": s, "embedding": txt[t + j].tolist()} for j, s in enumerate(r.texts)]})
            i, t = i + len(r.names), t + len(r.texts)
        return out

    # -- search and info ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.pipeline.model.cfg.embed_dim

    def index(self, name: Optional[str]):
        if not self.indexes:
            raise RequestError("index", "this server has no index (start it with vlm serve INDEX)", 404)
        if name is None:
            if len(self.indexes) > 1:
                raise RequestError("index", f"several indexes are served; name one of {sorted(self.indexes)}")
            return next(iter(self.indexes.items()))
        if name not in self.indexes:
            raise RequestError("index", f"{name!r}: no such index (served: {sorted(self.indexes)})", 404)
        return name, self.indexes[name]

    def query_vector(self, req: SearchRequest) -> np.ndarray:
        """(1, E) L2-normalised query embedding of a text, image or vector query."""
        if req.vector is not None:
            v = np.asarray(req.vector, dtype=np.float32)[None]
            if v.shape[1] != self.dim:
                raise RequestError("embedding", f"{v.shape[1]} dimensions; the model's embeddings have {self.dim}")
            norm = float(np.linalg.norm(v))
            if not np.isfinite(norm) or norm == 0:
                raise RequestError("embedding", "a zero or non-finite vector")
            return v / norm
        with self.lock:
            if req.text is not None:
                return self.pipeline.encode_texts([req.text]).cpu().numpy()
            return self.pipeline.encode_images([req.image]).cpu().numpy()

    def search(self, req: SearchRequest) -> dict:
        name, index = self.index(req.index)
        hits = index.search_vectors(self.query_vector(req), req.k)[0]
        return {"query": req.name, "index": name, "results": [self.hit_dict(index, h) for h in hits]}

    def hit_dict(self, index, hit) -> dict:
        out = hit.to_dict()
        row = index.row(hit.path)
        for column in ("caption", "ood"):
            values = index.rows.get(column)
            if values is not None and row is not None:
                out[column] = values[row]
        return out

    def info(self) -> dict:
        cfg = self.pipeline.model.cfg
        return {"model": self.pipeline.name, "precision": self.pipeline.precision, "dim": self.dim,
                "can_caption": self.pipeline.can_caption,
                "image_size": self.pipeline.image_size, "context_length": cfg.text.context_length,
                "indexes": {n: {"size": len(ix), "path": str(ix.path), "model": ix.info["model"]}
                            for n, ix in self.indexes.items()}}
