"""Near-duplicate removal among search hits, as clip-retrieval's back end does it for ``deduplicate``.

    keep = near_duplicates_dropped(vectors)          # vectors (n, dim) L2-normalised, best hit first

Two hits are near duplicates when the cosine of their stored image embeddings is at least
``THRESHOLD``; near duplicates chain (A~B and B~C put A, B and C in one group) and each group
keeps only its best-ranked hit. The threshold, 0.94, is the one clip-retrieval 2.45's
``/knn-service`` applies to its own results.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.94


def near_duplicates_dropped(vectors: np.ndarray, threshold: float = THRESHOLD) -> list[int]:
    """Positions of the hits to keep, in rank order: the first of each group of near duplicates."""
    v = np.asarray(vectors, dtype=np.float32)
    n = len(v)
    close = (v @ v.T) >= threshold  # (n, n) bool; n is at most the server's k cap
    group = list(range(n))  # union-find over the "near duplicate" graph

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(close, 1))):
        a, b = root(int(i)), root(int(j))
        if a != b:
            group[max(a, b)] = min(a, b)  # the better-ranked hit is the group's root
    return [i for i in range(n) if root(i) == i]
