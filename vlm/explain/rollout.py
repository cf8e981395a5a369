"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Raw attention of one layer says little about which input patches a token ends
up carrying, because every block also adds its input back (the residual path)
and tokens mix over many layers. Rollout models both:

1. per layer, average the heads: A_l = mean_h attn_l[h]                       (T, T)
2. add the identity for the residual and renormalise the rows:
   Â_l = (A_l + I) / rowsum(A_l + I)   (= 0.5 A_l + 0.5 I, as rows of A_l sum to 1)
3. multiply through the layers, first layer on the right: R = Â_L ... Â_2 Â_1

Row t of R is how much of each input token flows into token t at the output.
The image summary is read from the pooled token: the CLS row of R (ViT/CLIP,
``pool="cls"``), or for CoCa's attentional pooler (``pool="attn"``) the pooler's
contrastive query attention over the output tokens (heads averaged) composed
with R: w R. The patch part of that row, reshaped to the grid, is the map.

    >>> att = vit_attention(model, images)
    >>> maps = attention_rollout(att.layers, att.num_prefix, att.pooler, att.grid)   # (B, gh, gw)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def rollout_matrix(attn: Sequence[np.ndarray], residual: bool = True) -> np.ndarray:
    """(B, T, T) product of the head-averaged, residual-augmented layer attentions."""
    rolled = None
    for a in attn:
        a = np.asarray(a, dtype=np.float64).mean(axis=1)  # (B, T, T) heads averaged
        if residual:
            a = a + np.eye(a.shape[-1])
            a = a / a.sum(axis=-1, keepdims=True)
        rolled = a if rolled is None else a @ rolled  # later layers multiply from the left
    if rolled is None:
        raise ValueError("attention rollout needs at least one layer")
    return rolled


def _grid_of(n: int, grid: Optional[tuple]) -> tuple:
    if grid is not None:
        if grid[0] * grid[1] != n:
            raise ValueError(f"{n} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        return tuple(grid)
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch tokens are not a square grid; pass grid=(gh, gw)")
    return g, g


def attention_rollout(attn: Sequence[np.ndarray], num_prefix: int, pooler: Optional[np.ndarray] = None,
                      grid: Optional[tuple] = None, query: int = 0, residual: bool = True) -> np.ndarray:
    """(B, gh, gw) share of the pooled token's attention flow that comes from each patch.

    ``attn``: one (B, heads, T, T) array per layer. ``pooler``: (B, heads, n_queries, T)
    attentional-pooler attention; then the map follows pooler query ``query``
    (0: the contrastive query). Without a pooler the CLS token (index 0) is followed.
    """
    rolled = rollout_matrix(attn, residual)  # (B, T, T)
    if pooler is not None:
        w = np.asarray(pooler, dtype=np.float64)[:, :, query].mean(axis=1)  # (B, T) heads averaged
        row = np.einsum("bt,bts->bs", w, rolled)  # (B, T)
    else:
        if num_prefix < 1:
            raise ValueError("no CLS token and no pooler: there is no pooled token to follow")
        row = rolled[:, 0]  # (B, T) the CLS token's row
    patches = row[:, num_prefix:]  # (B, N)
    gh, gw = _grid_of(patches.shape[-1], grid)
    return patches.reshape(-1, gh, gw)  # (B, gh, gw)
