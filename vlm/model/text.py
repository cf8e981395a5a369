"""The contrastive text transformer (CLIP's text tower, Radford et al. 2021).

Causal self-attention over token + position embeddings. The sentence embedding
is taken at the end-of-text token (``pool="eot"``, CLIP) or at a CLS token
appended after the text (``pool="cls"``, CoCa), then projected to the shared
embedding size. The per-token outputs are what the CoCa caption decoder reads;
``embed_incremental`` computes them one step at a time with a key/value cache.

``embed`` returns only the sentence embedding and runs no trailing padding: a
causal stack never lets a token see a later one, so the positions after the
pooled token change nothing it computes (open_clip always runs all 77).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlm.model.config import TextConfig
from vlm.model.layers import KVCache, Transformer


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

    def embed(self, text: Tensor) -> Tensor:
        """(B, embed_dim) projected sentence embedding, equal to ``forward(text).pooled``.

        The batch is cut to its longest text first: for ``pool="eot"`` up to the last
        end-of-text token; for ``pool="cls"`` up to the last non-padding token (plus the
        first padding key, which the legacy mask lets the CLS token see). The CLS token
        keeps the position and key visibility it has after the full-length text.
        """
        B, L = text.shape
        keep = self._kept_length(text)
        if keep >= L:
            return self.forward(text).pooled
        if self.cls_token is None:
            return self.forward(text[:, :keep]).pooled
        short = text[:, :keep]
        x = self.token_embed(short) + self.pos_embed[:keep].to(self.token_embed.weight.dtype)  # (B, keep, W)
        cls = self.cls_token + self.pos_embed[L]  # the position it has after L tokens
        x = torch.cat([x, cls.to(x.dtype).expand(B, 1, -1)], dim=1)  # (B, keep+1, W)
        mask = self._cls_mask(short)  # (B, 1, keep+1, keep+1)
        if self.cfg.cls_mask == "legacy":  # CLS sees itself iff the full-length text's last token is not padding
            mask[:, 0, -1, -1] = text[:, -1] != self.cfg.pad_id
        x = self.transformer(x, mask=mask)
        return self.proj(self.norm_final(x[:, -1]))

    def _kept_length(self, text: Tensor) -> int:
        """How many leading positions the pooled token depends on (one host sync per batch)."""
        L = text.shape[1]
        pos = torch.arange(1, L + 1, device=text.device)
        if self.cls_token is None:
            last = ((text == self.cfg.eot_id) * pos).amax()  # the last end-of-text, 1-based; 0 if none
            return L if int(last) == 0 else int(last)
        last = int(((text != self.cfg.pad_id) * pos).amax())  # last non-padding position, 1-based
        return min(L, last + (1 if self.cfg.cls_mask == "legacy" else 0)) if last else L

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
