"""Transformer building blocks shared by the ViT, the text tower and the decoder.

Pre-norm blocks (Vaswani et al. 2017, as used by ViT and CLIP): ``x + attn(norm(x))``
then ``x + mlp(norm(x))``. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` and can keep a key/value
cache for incremental decoding (``LayerCache``): causal stacks append the new
keys/values each step, cross-attention computes the image keys/values once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}")


@dataclass
class LayerCache:
    """Keys and values one attention layer has seen, each (B, heads, T, head_dim).

    Self-attention appends (``append``) into buffers with room to spare, so a decoding step
    writes one position instead of copying every cached one; ``k`` and ``v`` are views of them."""

    k: Optional[Tensor] = None
    v: Optional[Tensor] = None
    _kbuf: Optional[Tensor] = field(default=None, repr=False)
    _vbuf: Optional[Tensor] = field(default=None, repr=False)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """All keys and values so far, the new (B, heads, T_new, head_dim) ones last."""
        t0 = 0 if self.k is None else self.k.shape[2]
        t1 = t0 + k.shape[2]
        buf = self._kbuf
        if buf is None or buf.shape[2] < t1 or buf.shape[:2] != k.shape[:2] or buf.dtype != k.dtype:
            B, nh, _, hs = k.shape
            cap = max(t1, 2 * t0, 32)  # doubling: appending T positions one by one copies O(T); 32: a caption
            self._kbuf, self._vbuf = (k.new_empty(B, nh, cap, hs), v.new_empty(B, nh, cap, hs))
            if t0:
                self._kbuf[:, :, :t0] = self.k
                self._vbuf[:, :, :t0] = self.v
        self._kbuf[:, :, t0:t1] = k
        self._vbuf[:, :, t0:t1] = v
        self.k, self.v = self._kbuf[:, :, :t1], self._vbuf[:, :, :t1]  # (B, nh, t1, hs) views
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        if self.k is None:
            return
        if self._kbuf is not None:
            t = self.k.shape[2]
            self._kbuf, self._vbuf = self._kbuf.index_select(0, index), self._vbuf.index_select(0, index)
            self.k, self.v = self._kbuf[:, :, :t], self._vbuf[:, :, :t]
        else:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


@dataclass
class KVCache:
    """One ``LayerCache`` per attention layer of a stack (cross layers included)."""

    layers: list = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> "KVCache":
        return cls([LayerCache() for _ in range(n)])

    @property
    def length(self) -> int:
        """Number of positions already cached by the first (self-attention) layer."""
        k = self.layers[0].k if self.layers else None
        return 0 if k is None else k.shape[2]

    def reorder(self, index: Tensor) -> None:
        """Select batch rows, e.g. the surviving beams of beam search."""
        for layer in self.layers:
            layer.reorder(index)


class Attention(nn.Module):
    """Multi-head attention. Self-attention uses one fused qkv projection; with
    ``kv_dim`` set it is cross-attention: queries from x, keys/values from a context."""

    def __init__(self, dim: int, heads: int, kv_dim: Optional[int] = None):
        super().__init__()
        assert dim % heads == 0, "width must be divisible by heads"
        self.heads = heads
        self.cross = kv_dim is not None
        if self.cross:
            self.q_proj = nn.Linear(dim, dim)
            self.kv_proj = nn.Linear(kv_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: Tensor,
        context: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        is_causal: bool = False,
        cache: Optional[LayerCache] = None,
        kv: Optional[Tensor] = None,
    ) -> Tensor:
        """``kv``: a cross-attention's (B, N, 2C) keys and values, when the caller projected them."""
        B, T, C = x.shape
        if self.cross:
            q = self._split(self.q_proj(x))
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v  # the context's keys/values, computed once
            else:
                kv = self.kv_proj(context) if kv is None else kv  # (B, N, 2C)
                if cache is not None:  # contiguous, in one copy: attention over cached keys is then ~2x faster
                    kv = kv.view(*kv.shape[:2], 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
                    k, v = kv.contiguous()  # each (B, nh, N, hs)
                    cache.k, cache.v = k, v
                else:
                    k, v = kv.chunk(2, dim=-1)
                    k, v = self._split(k), self._split(v)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            q, k, v = self._split(q), self._split(k), self._split(v)  # (B, nh, T, hs)
            if cache is not None:
                seen = cache.k is not None
                k, v = cache.append(_cached(k), _cached(v))  # (B, nh, T_cached + T, hs)
                if seen and T == 1:
                    is_causal = False  # a single new query may see every cached key
                elif seen and is_causal:
                    mask, is_causal = _offset_causal_mask(T, k.shape[2], x), False
        if T == 1 and self.cross and mask is None and _slow_bf16_sdpa(q):
            y = _one_query_cross_attention(q, k, v)  # (B, nh, 1, hs)
        elif T == 1 and k.dtype != q.dtype:  # a decoding step of a bfloat16 model on CPU (_cached)
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask,
                                               is_causal=is_causal).to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                               is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)


def _slow_bf16_sdpa(q: Tensor) -> bool:
    """PyTorch's CPU attention kernel took 5-8x longer for one bfloat16 query than for one float32
    query over 30-256 keys (1.3-1.9 ms against 0.18-0.26 ms at 256 keys, 8 rows x 8 heads; BENCHMARKS.md,
    "Reduced precision"): a bfloat16 decoding step on CPU goes around it."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu"


def _cached(t: Tensor) -> Tensor:
    """Self-attention keys or values as a ``LayerCache`` keeps them: bfloat16 ones on CPU in float32,
    so a decoding step attends in float32 (``_slow_bf16_sdpa``) without converting the whole
    cache at every step. The cache holds at most a caption's length of positions."""
    return t.float() if _slow_bf16_sdpa(t) else t


def _one_query_cross_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, nh, 1, hs) queries over (B, nh, N, hs) bfloat16 image keys/values, by two products and a
    float32 softmax. The image keys/values stay bfloat16, the largest thing a step reads after the
    weights (4.2 MB per layer at 8 rows x 256 image tokens; 8.4 MB in float32). On the default model this
    gave the same teacher-forced agreement with float32 as float32 attention did (0.998 over 3287
    held-out tokens; docs/precision.md)."""
    w = (q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5)  # (B, nh, 1, N)
    return w.softmax(-1).to(q.dtype) @ v  # (B, nh, 1, hs)


def _offset_causal_mask(t_new: int, t_total: int, like: Tensor) -> Tensor:
    """Boolean mask letting new query i (at position t_total - t_new + i) see keys <= it."""
    q_pos = torch.arange(t_total - t_new, t_total, device=like.device)[:, None]
    k_pos = torch.arange(t_total, device=like.device)[None, :]
    return k_pos <= q_pos  # (t_new, t_total)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, is_causal: bool = False,
                cache: Optional[LayerCache] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: queries from the text, keys/values from the
    (separately normalised) image tokens, then an MLP.

    Every cross block of a decoder normalises the same image tokens, each with its own affine
    (γ, β). ``unit_context`` takes them normalised once without affine (``unit_norm``); the block's
    γ and β are then folded into its key/value projection, an identity:
    (n γ + β) Wᵀ + b = n (W diag γ)ᵀ + (W β + b)."""

    def __init__(self, dim: int, heads: int, kv_dim: int, mlp_ratio: float = 4.0, act: str = "gelu",
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(kv_dim, eps=eps)
        self.attn = Attention(dim, heads, kv_dim=kv_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act)

    def forward(self, x: Tensor, context: Optional[Tensor], cache: Optional[LayerCache] = None,
                unit_context: Optional[Tensor] = None) -> Tensor:
        kv = None
        if unit_context is not None:
            kv = F.linear(unit_context, *self._folded_kv())  # (B, N, 2C)
        elif context is not None and (cache is None or cache.k is None):
            context = self.norm_kv(context)
        x = x + self.attn(self.norm1(x), context=context, cache=cache, kv=kv)
        return x + self.mlp(self.norm2(x))

    def _folded_kv(self) -> tuple[Tensor, Tensor]:
        """The key/value projection's weight and bias with ``norm_kv``'s affine folded in, in the
        parameters' dtype (elementwise products and a sum: autocast leaves them alone)."""
        w, g, b = self.attn.kv_proj.weight, self.norm_kv.weight, self.norm_kv.bias  # (2C, D), (D,), (D,)
        return w * g, self.attn.kv_proj.bias + (w * b).sum(-1)  # (2C, D), (2C,)

    @staticmethod
    def unit_norm(context: Tensor, eps: float) -> Tensor:
        """The image tokens normalised without affine, shared by every cross block."""
        return F.layer_norm(context, context.shape[-1:], eps=eps)


class Transformer(nn.Module):
    """A stack of ``Block``s with an optional gradient-checkpointing switch."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, act, eps) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, is_causal: bool = False,
                cache: Optional[KVCache] = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, is_causal, layer_cache, use_reentrant=False)
            else:
                x = block(x, mask=mask, is_causal=is_causal, cache=layer_cache)
        return x
