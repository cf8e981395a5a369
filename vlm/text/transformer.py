"""The contrastive text transformer (CLIP's text tower, Radford et al. 2021).

Causal self-attention over token + position embeddings. The sentence embedding
is taken at the end-of-text token (``pool="eot"``, CLIP) or at a CLS token
appended after the text (``pool="cls"``, CoCa), then projected to the shared
embedding size. The per-token outputs are what the CoCa caption decoder reads;
``embed_incremental`` computes them one step at a time with a key/value cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from vlm.config import TextConfig
from vlm.layers import KVCache, Transformer


@dataclass
class TextOutput:
    pooled: Tensor  # (B, embed_dim) projected, not normalised
    tokens: Tensor  # (B, L, width) per-token outputs for the caption decoder


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.token_embed = nn.Embedding(cfg.vocab_size, W)
        self.cls_token = nn.Parameter(torch.randn(W) * 0.02) if cfg.pool == "cls" else None
        n_pos = cfg.context_length + (1 if self.cls_token is not None else 0)
        self.pos_embed = nn.Parameter(torch.randn(n_pos, W) * 0.01)
        self.transformer = Transformer(W, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_eps)
        self.norm_final = nn.LayerNorm(W, eps=cfg.norm_eps)
        self.proj = nn.Linear(W, embed_dim, bias=False)

    def _cls_mask(self, text: Tensor) -> Tensor:
        """Boolean (B, 1, L+1, L+1) mask: causal, and no query attends to padded keys."""
        B, L = text.shape
        valid = text != self.cfg.pad_id  # (B, L)
        ones = valid.new_ones(B, 1)
        if self.cfg.cls_mask == "legacy":
            keys = torch.cat([ones, valid], dim=1)  # shifted one right, as open_clip's CoCa
        else:
            keys = torch.cat([valid, ones], dim=1)  # (B, L+1), CLS itself always visible
        causal = torch.ones(L + 1, L + 1, dtype=torch.bool, device=text.device).tril()
        return (causal & keys[:, None, :])[:, None]  # (B, 1, L+1, L+1)

    def forward(self, text: Tensor) -> TextOutput:
        B, L = text.shape
        x = self.token_embed(text)  # (B, L, W)
        if self.cls_token is not None:
            x = torch.cat([x, self.cls_token.to(x.dtype).expand(B, 1, -1)], dim=1)  # (B, L+1, W)
            x = x + self.pos_embed[: L + 1].to(x.dtype)
            x = self.transformer(x, mask=self._cls_mask(text))
            pooled, tokens = self.norm_final(x[:, -1]), x[:, :-1]
        else:
            x = x + self.pos_embed[:L].to(x.dtype)
            x = self.norm_final(self.transformer(x, is_causal=True))
            eot = (text == self.cfg.eot_id).int().argmax(dim=-1)  # first end-of-text position
            pooled, tokens = x[torch.arange(B, device=x.device), eot], x
        return TextOutput(pooled=self.proj(pooled), tokens=tokens)

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.transformer.blocks))

    def embed_incremental(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Token outputs for new ids (B, T) following ``cache.length`` cached positions.

        Equal to ``forward(text).tokens`` at those positions: the causal stack never
        lets a text token see the appended CLS token, so it is left out here.
        """
        start = cache.length
        x = self.token_embed(ids) + self.pos_embed[start : start + ids.shape[1]].to(self.token_embed.weight.dtype)
        x = self.transformer(x, is_causal=True, cache=cache)
        return x if self.cls_token is not None else self.norm_final(x)
