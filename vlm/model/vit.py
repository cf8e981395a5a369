"""The Vision Transformer image encoder (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words").

The image is cut into P x P patches by a strided convolution (one linear
embedding per flattened patch), a CLS token is prepended, learned position
embeddings are added and pre-norm transformer blocks follow. The image is
summarised either by the CLS token or by an attentional pooler (CoCa): learned
queries cross-attend to the tokens; the first query's output is the contrastive
embedding and the rest are the tokens the caption decoder reads.

At a resolution other than the trained one the patch size stays fixed and the
position embeddings are resized by bicubic interpolation (``resize_pos_embed``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.model.config import VisionConfig, check_image_size
from vlm.model.layers import Attention, Transformer


@dataclass
class VisionOutput:
    pooled: Tensor  # (B, embed_dim) projected, not normalised (no projection: the pooled feature)
    tokens: Tensor  # (B, N, token_dim) the tokens the caption decoder cross-attends to


def resize_pos_embed(pos: Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Bicubically resize (num_prefix + gh*gw, C) position embeddings to a new patch grid.

    The prefix (CLS) embeddings are kept as they are. Resizing to the same grid is
    the identity.
    """
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    n, c = grid.shape
    old = int(math.isqrt(n))
    assert old * old == n, "position embeddings must sit on a square grid"
    if (old, old) == tuple(new_grid):
        return pos
    grid = grid.reshape(1, old, old, c).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, c).to(pos.dtype)  # (gh'*gw', C)
    return torch.cat([prefix, grid], dim=0)


class AttentionalPooler(nn.Module):
    """n learned queries cross-attend to the image tokens: (B, N, C) -> (B, n, dim)."""

    def __init__(self, dim: int, context_dim: int, heads: int, n_queries: int, eps: float):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_k = nn.LayerNorm(context_dim, eps=eps)
        self.attn = Attention(dim, heads, kv_dim=context_dim)

    def forward(self, x: Tensor) -> Tensor:
        q = self.norm_q(self.query).expand(x.shape[0], -1, -1)  # (B, n, dim)
        return self.attn(q, context=self.norm_k(x))


class VisionTransformer(nn.Module):
    """``embed_dim=None``: no contrastive projection (a supervised classifier's backbone)."""

    def __init__(self, cfg: VisionConfig, embed_dim: Optional[int]):
        super().__init__()
        self.cfg = cfg
        W, P = cfg.width, cfg.patch_size
        self.grid = cfg.image_size // P
        self.num_prefix = 1 if cfg.cls_token else 0
        self.patch_embed = nn.Conv2d(3, W, kernel_size=P, stride=P, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(W) * 0.02) if cfg.cls_token else None
        self.pos_embed = nn.Parameter(torch.randn(self.num_prefix + self.grid**2, W) * 0.01)
        self.norm_pre = nn.LayerNorm(W, eps=cfg.norm_eps) if cfg.norm_pre else nn.Identity()
        self.transformer = Transformer(W, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_eps)
        if cfg.pool == "attn":
            assert embed_dim is not None, "the attentional pooler works at the embedding width"
            self.attn_pool = AttentionalPooler(embed_dim, W, cfg.attn_pool_heads, cfg.attn_pool_queries,
                                               cfg.norm_eps)
            pool_dim = embed_dim
        else:
            self.attn_pool = None
            pool_dim = W
        self.norm_post = nn.LayerNorm(pool_dim, eps=cfg.norm_eps)
        self.proj = nn.Linear(pool_dim, embed_dim, bias=False) if embed_dim is not None else nn.Identity()
        self.token_dim = pool_dim
        self._pos_cache: dict = {}

    def pos_embed_for(self, gh: int, gw: int) -> Tensor:
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        if self.training or torch.is_grad_enabled():
            return resize_pos_embed(self.pos_embed, (gh, gw), self.num_prefix)
        key = (gh, gw, self.pos_embed._version, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._pos_cache:
            self._pos_cache = {key: resize_pos_embed(self.pos_embed, (gh, gw), self.num_prefix)}
        return self._pos_cache[key]

    def set_image_size(self, image_size: int) -> None:
        """Take ``image_size`` inputs from now on, for good (e.g. to fine-tune at a higher resolution):
        the position embeddings are resampled and ``self.cfg`` is a new config saying so (the
        config object it was built from is not changed; ``CLIP.set_image_size`` updates the model's)."""
        check_image_size(image_size, self.cfg.patch_size)
        g = image_size // self.cfg.patch_size
        with torch.no_grad():
            new = resize_pos_embed(self.pos_embed.data, (g, g), self.num_prefix)
        self.pos_embed = nn.Parameter(new)
        self.grid = g
        self.cfg = dataclasses.replace(self.cfg, image_size=image_size)
        self._pos_cache = {}

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, prefix + gh*gw, width), after the transformer blocks."""
        # int(): under ONNX/JIT tracing the sizes are 0-d tensors; the strided conv would drop pixels
        check_image_size((int(images.shape[-2]), int(images.shape[-1])), self.cfg.patch_size)
        x = self.patch_embed(images)  # (B, W, gh, gw)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, W)
        if self.cls_token is not None:
            cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
            x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed_for(gh, gw).to(x.dtype)
        x = self.norm_pre(x)
        return self.transformer(x)

    def pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Transformer output -> (pooled feature before the projection (B, token_dim), tokens)."""
        if self.attn_pool is not None:
            x = self.norm_post(self.attn_pool(x))  # (B, n_queries, embed_dim)
            return x[:, 0], x[:, 1:]
        x = self.norm_post(x)
        return x[:, 0], x[:, self.num_prefix:]

    def forward_head(self, x: Tensor) -> VisionOutput:
        pooled, tokens = self.pool(x)
        return VisionOutput(pooled=self.proj(pooled), tokens=tokens)

    def forward(self, images: Tensor) -> VisionOutput:
        return self.forward_head(self.forward_features(images))
