"""The CoCa caption decoder (Yu et al. 2022, "CoCa: Contrastive Captioners").

Each layer is a causal self-attention block followed by a cross-attention block
whose keys/values are the image tokens. It reads the unimodal text tower's token
outputs and ends in an LM head over the vocabulary. With a ``KVCache`` it decodes
incrementally: self-attention keys/values grow by one step, cross-attention
keys/values of the image are computed once.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from vlm.model.config import DecoderConfig
from vlm.model.layers import Block, CrossBlock, KVCache


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, image_dim: int):
        super().__init__()
        self.self_block = Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_eps)
        self.cross_block = CrossBlock(cfg.width, cfg.heads, image_dim, cfg.mlp_ratio, cfg.act, cfg.norm_eps)


class CaptionDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, image_dim: int):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg, image_dim) for _ in range(cfg.layers))
        self.norm_final = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.grad_checkpointing = False

    def new_cache(self) -> KVCache:
        """Caches ordered [self_0, cross_0, self_1, cross_1, ...]."""
        return KVCache.empty(2 * len(self.layers))

    def forward(self, text_tokens: Tensor, image_tokens: Optional[Tensor],
                cache: Optional[KVCache] = None) -> Tensor:
        """(B, T, width) text token outputs, (B, N, image_dim) image tokens -> (B, T, vocab) logits.

        With a cache holding the image keys/values, ``image_tokens`` may be None. In training, the
        image tokens are normalised once for all layers (``CrossBlock.unit_norm``): one layer norm
        over the B x N image tokens, forward and backward, instead of one per layer.
        """
        from torch.utils.checkpoint import checkpoint

        x = text_tokens
        unit = None
        if self.training and cache is None and image_tokens is not None and self.layers:
            unit = CrossBlock.unit_norm(image_tokens, self.layers[0].cross_block.norm_kv.eps)  # (B, N, D)
        use_ckpt = self.grad_checkpointing and self.training and cache is None
        for i, layer in enumerate(self.layers):
            self_cache = cache.layers[2 * i] if cache is not None else None
            cross_cache = cache.layers[2 * i + 1] if cache is not None else None
            if use_ckpt:
                x = checkpoint(layer.self_block, x, None, True, None, use_reentrant=False)
                x = checkpoint(layer.cross_block, x, image_tokens, None, unit, use_reentrant=False)
            else:
                x = layer.self_block(x, is_causal=True, cache=self_cache)
                x = layer.cross_block(x, image_tokens, cache=cross_cache, unit_context=unit)
        return self.lm_head(self.norm_final(x))
