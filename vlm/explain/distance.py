"""Mean attention distance per head: how far each ViT head looks (Dosovitskiy et al. 2021, Fig. 7).

For one head, one query patch q: the distance in pixels between the centre of q
and the centre of each key patch k, weighted by the attention q pays to k.
Patch centres sit at ((row + 0.5) P, (col + 0.5) P) for patch size P.

Convention for the CLS (prefix) token: it has no position in the image, so it
is left out on both sides. Only patch queries are averaged, and each query's
attention over the patch keys is renormalised to sum to one (the mass a query
puts on the CLS token is dropped). A query that puts all its attention on the
CLS token has no patch distance and is skipped. The per-query distances are
then averaged over the query patches and the images of the batch.

Small distances mean local heads (like a convolution), large ones global heads;
uniform attention over a g x g grid gives ``uniform_attention_distance``.

    >>> d = mean_attention_distance(vit_attention(model, x).layers, (8, 8), 8, 1)   # (layers, heads)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def patch_distances(grid: tuple, patch_size: int) -> np.ndarray:
    """(N, N) Euclidean distances in pixels between the centres of the gh*gw patches (row-major)."""
    gh, gw = grid
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    centres = (np.stack([rows.ravel(), cols.ravel()], axis=-1) + 0.5) * patch_size  # (N, 2) pixels
    return np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)  # (N, N)


def mean_attention_distance(attn: Sequence[np.ndarray] | np.ndarray, grid: tuple, patch_size: int,
                            num_prefix: int) -> np.ndarray:
    """(layers, heads) attention-weighted mean query-key distance in pixels.

    ``attn``: one (B, heads, T, T) array per layer (or a (layers, B, heads, T, T)
    array) with T = num_prefix + gh*gw.
    """
    gh, gw = grid
    dist = patch_distances(grid, patch_size)  # (N, N)
    out = []
    for a in attn:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 4 or a.shape[-1] != num_prefix + gh * gw or a.shape[-2] != a.shape[-1]:
            raise ValueError(f"attention of shape {a.shape} does not fit a {gh}x{gw} grid with "
                             f"{num_prefix} prefix tokens")
        patches = a[:, :, num_prefix:, num_prefix:]  # (B, H, N, N) patch queries -> patch keys
        mass = patches.sum(axis=-1)  # (B, H, N)
        weighted = (patches * dist).sum(axis=-1)  # (B, H, N)
        ok = mass > 1e-12
        per_query = np.where(ok, weighted / np.where(ok, mass, 1.0), 0.0)  # (B, H, N)
        count = ok.sum(axis=(0, 2))  # (H,) queries with some attention on patches
        total = per_query.sum(axis=(0, 2))  # (H,)
        # a head whose every query looks only at the prefix has no patch distance: NaN
        out.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return np.stack(out)  # (layers, heads)


def uniform_attention_distance(grid: tuple, patch_size: int) -> float:
    """The mean distance of a head attending uniformly to every patch: a 'global' reference line."""
    return float(patch_distances(grid, patch_size).mean())
