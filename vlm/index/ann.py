"""The faiss index over the embeddings: exact up to ``EXACT_LIMIT`` vectors, approximate beyond,
chosen to fit a memory budget, tuned and measured at build time.

* ``flat``:  exact inner product (``IndexFlatIP``); cosine similarity on L2-normalised vectors.
* ``ivf``:   inverted lists over k-means cells (Jégou et al. 2011's IVF, with exact vectors),
             ``nlist`` ~ 2·sqrt(n); the number of cells probed is tuned to the recall target.
* ``ivfpq``: the same cells with product-quantised vectors (``m`` bytes each), when the raw vectors
             do not fit the memory budget.
* ``hnsw``:  a graph index (Malkov & Yashunin 2018), ``efSearch`` tuned; only on request.

The recall is measured on a held-out sample of the index's own vectors (left out of k-means
training): for each, the share of its 10 exact nearest neighbours (itself excluded) that the
index returns. Run: ``python -c "import numpy as np; from vlm.index.ann import build; print(build(np.eye(4, dtype='float32'))[1])"``.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

EXACT_LIMIT = 100_000  # up to this many vectors the index is exact
INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
DEFAULT_BUDGET = 8 << 30  # bytes of RAM the index may take (8 GiB)
RECALL_TARGET = 0.95


def choose(n: int, dim: int, index_type: str = "auto", memory_budget: int = DEFAULT_BUDGET) -> str:
    if index_type != "auto":
        return index_type
    if n <= EXACT_LIMIT:
        return "flat"
    return "ivf" if n * dim * 4 * 1.05 <= memory_budget else "ivfpq"


def _pq_bytes(n: int, dim: int, budget: int) -> int:
    """The most bytes per vector (a divisor of dim, at most dim/2) whose codes fit the budget."""
    for m in sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0), reverse=True):
        if n * (m + 8) <= budget:
            return m
    return 1


def _exact_neighbours(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    import faiss

    _, nn = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)  # no copy of the vectors
    return _drop_self(nn, ids, k)


def _drop_self(nn: np.ndarray, ids: np.ndarray, k: int) -> list[set]:
    return [set([j for j in row if j != own and j >= 0][:k]) for row, own in zip(nn, ids)]


def recall_at(index, queries: np.ndarray, ids: np.ndarray, truth: list[set], k: int = 10) -> float:
    _, nn = index.search(queries, k + 1)
    got = _drop_self(nn, ids, k)
    return float(np.mean([len(g & t) / max(len(t), 1) for g, t in zip(got, truth)]))


def build(vectors: np.ndarray, index_type: str = "auto", memory_budget: int = DEFAULT_BUDGET,
          recall_target: float = RECALL_TARGET, seed: int = 0, sample: int = 1000):
    """(faiss index, info dict) over ``vectors`` (n, dim) float32, rows L2-normalised."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = choose(n, dim, index_type, memory_budget)
    if kind not in INDEX_TYPES[1:]:
        raise ValueError(f"index type {kind!r}: must be one of {', '.join(INDEX_TYPES)}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(n, size=min(sample, n), replace=False)) if n else np.zeros(0, dtype=np.int64)
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        params = {"M": 32, "efConstruction": 80}
    else:
        nlist = max(1, min(2 ** round(math.log2(max(2 * math.sqrt(n), 1))), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist}
        else:
            m = _pq_bytes(n, dim, memory_budget)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            params = {"nlist": nlist, "m": m, "nbits": 8}
        train_mask = np.ones(n, dtype=bool)
        train_mask[held] = False
        pool = np.flatnonzero(train_mask)
        take = rng.choice(pool, size=min(len(pool), 64 * nlist), replace=False)
        index.cp.niter = 10
        index.cp.seed = seed
        index.train(vectors[np.sort(take)])
    index.add(vectors)
    built = time.perf_counter() - start
    info = {"type": kind, "params": params, "build_seconds": round(built, 3),
            "recall_at_10": 1.0, "recall_sample": int(len(held))}
    if kind != "flat" and n > 1:
        queries = vectors[held]
        truth = _exact_neighbours(vectors, queries, held, 10)
        knob, values = ("nprobe", [1 << i for i in range(int(math.log2(params["nlist"])) + 1)]) \
            if kind in ("ivf", "ivfpq") else ("efSearch", [16, 32, 64, 128, 256, 512, 1024])
        for value in values:
            set_knob(index, knob, value)
            recall = recall_at(index, queries, held, truth)
            if recall >= recall_target:
                break
        params[knob] = value
        info["recall_at_10"] = round(recall, 4)
    return index, info


def set_knob(index, knob: str, value: int) -> None:
    if knob == "nprobe":
        index.nprobe = int(value)
    elif knob == "efSearch":
        index.hnsw.efSearch = int(value)


def apply_params(index, info: dict) -> None:
    """Restore the tuned search-time setting recorded in index.json."""
    for knob in ("nprobe", "efSearch"):
        if knob in info.get("params", {}):
            set_knob(index, knob, info["params"][knob])


def to_bytes(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes):
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
