"""Patch-embedding filters: what the ViT's first linear layer looks for (Dosovitskiy et al. 2021, Fig. 7 left).

The patch embedding is a convolution with W filters of shape (3, P, P), one per
output channel. Plotted raw they look noisy; the ViT paper shows the leading
principal components of the W flattened filters instead, which resemble
plausible basis functions (colour blobs, edges, low frequencies).

``patch_filters(model)`` returns them as (n, P, P, 3) RGB tiles, unnormalised;
scale each tile to [0, 1] for display (``figures.plot_filters`` does).

    >>> tiles = patch_filters(model, n=28)                 # principal components
    >>> raw = patch_filters(model, n=28, mode="raw")       # the first 28 filters as they are
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from vlm.explain.attention import visual_of

MODES = ("pca", "raw")


def filter_weights(model) -> np.ndarray:
    """(W, 3, P, P) float64 weights of the patch-embedding convolution."""
    return visual_of(model).patch_embed.weight.detach().to(torch.float64).cpu().numpy()


def filter_pca(weight: np.ndarray, n: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of (W, 3, P, P) filters: ((n, P, P, 3) components, (n,) explained-variance shares)."""
    W, C, P, _ = weight.shape
    flat = weight.reshape(W, C * P * P)  # (W, 3*P*P) one row per filter
    flat = flat - flat.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(flat, full_matrices=False)  # vt: (min(W, 3P²), 3P²)
    var = s**2
    share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    n = len(s) if n is None else min(n, len(s))
    comps = vt[:n].reshape(n, C, P, P).transpose(0, 2, 3, 1)  # (n, P, P, 3)
    for i in range(n):  # the sign of a component is arbitrary: make its largest entry positive
        if comps[i].flat[np.abs(comps[i]).argmax()] < 0:
            comps[i] = -comps[i]
    return comps, share[:n]


def patch_filters(model, n: Optional[int] = 28, mode: str = "pca") -> np.ndarray:
    """(n, P, P, 3) leading principal components (``mode="pca"``) or first raw filters (``"raw"``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    weight = filter_weights(model)
    if mode == "pca":
        return filter_pca(weight, n)[0]
    n = weight.shape[0] if n is None else min(n, weight.shape[0])
    return weight[:n].transpose(0, 2, 3, 1).copy()  # (n, P, P, 3)
