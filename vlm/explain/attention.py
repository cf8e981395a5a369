"""Capturing attention probabilities for explanations, without touching the fast path.

The model's ``Attention`` layers call ``scaled_dot_product_attention``, which
never materialises the attention matrix. ``capture_attention(modules)`` is a
context manager that registers forward hooks on chosen ``Attention`` modules;
each hook recomputes ``softmax(q k^T / sqrt(head_dim))`` (with the same mask)
from the module's own input and keeps it. Outside the context nothing is
hooked, so normal forwards run exactly as before.

``vit_attention(model, images)`` runs the image encoder once and returns every
ViT layer's attention and, for CoCa's attentional pooler, the pooler's
attention over the image tokens (Yu et al. 2022). ``attention_maps`` is the
short form returning the per-layer list only.

    >>> from vlm.explain import vit_attention
    >>> att = vit_attention(model, images)      # att.layers[i]: (B, heads, T, T)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vlm.model.layers import Attention


def attention_probs(attn: Attention, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                    is_causal: bool = False) -> Tensor:
    """Recompute the (B, heads, Tq, Tk) attention probabilities ``attn`` uses on input ``x``.

    ``context`` is the (already normalised) key/value input of a cross-attention
    module; ``mask`` and ``is_causal`` mean what they mean to ``Attention.forward``.
    """
    if attn.cross:
        if context is None:
            raise ValueError("a cross-attention module needs its context to recompute attention")
        q = attn._split(attn.q_proj(x))  # (B, nh, Tq, hs)
        k = attn._split(attn.kv_proj(context).chunk(2, dim=-1)[0])  # (B, nh, Tk, hs)
    else:
        q, k, _ = attn.qkv(x).chunk(3, dim=-1)
        q, k = attn._split(q), attn._split(k)  # (B, nh, T, hs)
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, Tq, Tk)
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores.softmax(dim=-1)


class AttentionRecord:
    """The attention probabilities each hooked module produced, in call order."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.probs: dict[str, list[Tensor]] = {n: [] for n in self.names}

    def get(self, name: str) -> Tensor:
        """The last recorded (B, heads, Tq, Tk) probabilities of module ``name``."""
        if not self.probs[name]:
            raise RuntimeError(f"{name}: no attention was recorded (the module did not run)")
        return self.probs[name][-1]


@contextmanager
def capture_attention(modules: dict[str, Attention]) -> Iterator[AttentionRecord]:
    """Record the attention probabilities of ``modules`` (name -> Attention) inside the block.

    Incremental decoding with a key/value cache is not supported (the keys of the
    earlier steps are not in the module's input); run full sequences instead.
    """
    record = AttentionRecord(list(modules))

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            x = args[0] if args else kwargs["x"]
            names = ("context", "mask", "is_causal", "cache")
            extra = dict(zip(names, args[1:]))
            extra.update({k: kwargs[k] for k in names if k in kwargs})
            if extra.get("cache") is not None:
                raise RuntimeError("capture_attention does not support key/value-cached forwards")
            with torch.no_grad():
                p = attention_probs(module, x, extra.get("context"), extra.get("mask"),
                                    bool(extra.get("is_causal", False)))
            record.probs[name].append(p.detach().cpu())

        return hook

    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def visual_of(model) -> nn.Module:
    """The VisionTransformer of a CLIP/CoCa model (or the encoder itself)."""
    return getattr(model, "visual", model)


@dataclass
class ViTAttention:
    """Attention probabilities of one image-encoder forward."""

    layers: list  # one (B, heads, T, T) float32 array per ViT block; T = num_prefix + gh*gw
    pooler: Optional[np.ndarray]  # (B, pool_heads, n_queries, T) attentional-pooler attention, or None
    grid: tuple  # (gh, gw) patch grid of this input
    patch_size: int  # P, pixels per patch side
    num_prefix: int  # tokens before the patches (1: the CLS token, 0: none)


def vit_modules(visual) -> dict[str, Attention]:
    """The ViT's attention modules by name: ``block{i}`` and, if present, ``pooler``."""
    mods = {f"block{i}": blk.attn for i, blk in enumerate(visual.transformer.blocks)}
    if visual.attn_pool is not None:
        mods["pooler"] = visual.attn_pool.attn
    return mods


@torch.no_grad()
def vit_attention(model, images: Tensor) -> ViTAttention:
    """Run the image encoder on (B, 3, H, W) ``images`` and return all its attention maps."""
    visual = visual_of(model)
    mods = vit_modules(visual)
    P = visual.cfg.patch_size
    with capture_attention(mods) as rec:
        visual(images)
    names = [n for n in mods if n.startswith("block")]
    return ViTAttention(
        layers=[rec.get(n).numpy() for n in names],
        pooler=rec.get("pooler").numpy() if "pooler" in mods else None,
        grid=(images.shape[-2] // P, images.shape[-1] // P),
        patch_size=P,
        num_prefix=visual.num_prefix,
    )


def attention_maps(model, images: Tensor) -> list:
    """One (B, heads, T, T) array of attention probabilities per ViT layer."""
    return vit_attention(model, images).layers
