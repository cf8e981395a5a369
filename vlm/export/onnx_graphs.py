"""The torch modules traced into ONNX graphs: image encoder, text encoder, and CoCa's decoding step.

Each wrapper reads the weights of a live vlm model and computes exactly what vlm
computes, with every input and output a plain tensor, so the graph needs nothing
from vlm at run time:

- ``ImageEncoderGraph``: pixels (B, 3, S, S) -> L2-normalised embedding (B, E) and the
  image tokens (B, N, D) the caption decoder reads;
- ``ClassifierGraph`` (supervised classifiers): pixels -> class logits (B, C);
- ``TextEncoderGraph``: token ids (B, L) -> L2-normalised embedding (B, E);
- ``ImageKVGraph``: image tokens -> the decoder's cross-attention keys/values, stacked
  (layers, 2, B, heads, N, head_dim), computed once per image;
- ``DecoderStepGraph``: the next ids (B, T) and the key/value caches of the two causal
  stacks that run per token (the unimodal text tower and the multimodal decoder), each
  stacked (layers, 2, B, heads, P, head_dim) with P cached positions (0 at the start),
  plus the image keys/values -> the last position's logits (B, V) and the caches grown to
  P + T. This is ``vlm.generation.decode``'s cached step (Yu et al. 2022, CoCa) with the cache
  made explicit, as a runtime such as onnxruntime needs it.

Shapes in comments: B batch, T new tokens, P cached positions, h heads, d head size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        out = self.visual(pixel_values)
        return F.normalize(out.pooled, dim=-1), out.tokens


class ClassifierGraph(nn.Module):
    """A supervised classifier (``vlm.classify``): pixels (B, 3, S, S) -> class logits (B, C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).logits


class TextEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text = model.text

    def forward(self, input_ids: Tensor) -> Tensor:
        return F.normalize(self.text(input_ids).pooled, dim=-1)  # the full-length forward: no host sync


def _split(t: Tensor, heads: int) -> Tensor:
    B, T, C = t.shape
    return t.reshape(B, T, heads, C // heads).transpose(1, 2)  # (B, h, T, d)


def _merge(t: Tensor) -> Tensor:
    B, h, T, d = t.shape
    return t.transpose(1, 2).reshape(B, T, h * d)  # (B, T, h*d)


class ImageKVGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.layers = model.decoder.layers

    def forward(self, image_tokens: Tensor) -> Tensor:
        kv = []
        for layer in self.layers:
            block = layer.cross_block
            k, v = block.attn.kv_proj(block.norm_kv(image_tokens)).chunk(2, dim=-1)
            kv.append(torch.stack([_split(k, block.attn.heads), _split(v, block.attn.heads)]))  # (2, B, h, N, d)
        return torch.stack(kv)  # (layers, 2, B, h, N, d)


def _cached_self_block(block, x: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
    """One pre-norm causal block over T new positions after P cached ones; returns (x, present (2, B, h, P+T, d))."""
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(x)).chunk(3, dim=-1)
    q, k, v = _split(q, attn.heads), _split(k, attn.heads), _split(v, attn.heads)  # (B, h, T, d)
    k = torch.cat([past[0], k], dim=2)  # (B, h, P+T, d)
    v = torch.cat([past[1], v], dim=2)
    t_new, t_all = q.shape[2], k.shape[2]
    q_pos = torch.arange(t_new, device=x.device)[:, None] + (t_all - t_new)
    mask = torch.arange(t_all, device=x.device)[None, :] <= q_pos  # (T, P+T): new query i sees keys up to it
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    x = x + attn.out_proj(_merge(y))
    return x + block.mlp(block.norm2(x)), torch.stack([k, v])


class DecoderStepGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text = model.text
        self.decoder = model.decoder

    def forward(self, input_ids: Tensor, past_text: Tensor, past_decoder: Tensor,
                image_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        text = self.text
        start = past_text.shape[4]  # P cached positions
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + start  # (T,)
        x = text.token_embed(input_ids) + text.pos_embed[pos]  # (B, T, W)
        present_text = []
        for i, block in enumerate(text.transformer.blocks):
            x, kv = _cached_self_block(block, x, past_text[i])
            present_text.append(kv)
        if text.cls_token is None:  # CLIP-style text towers hand normalised tokens to the decoder
            x = text.norm_final(x)
        present_decoder = []
        for i, layer in enumerate(self.decoder.layers):
            x, kv = _cached_self_block(layer.self_block, x, past_decoder[i])
            present_decoder.append(kv)
            cross = layer.cross_block
            q = _split(cross.attn.q_proj(cross.norm1(x)), cross.attn.heads)  # (B, h, T, d)
            y = F.scaled_dot_product_attention(q, image_kv[i, 0], image_kv[i, 1])
            x = x + cross.attn.out_proj(_merge(y))
            x = x + cross.mlp(cross.norm2(x))
        logits = self.decoder.lm_head(self.decoder.norm_final(x[:, -1]))  # (B, V)
        return logits, torch.stack(present_text), torch.stack(present_decoder)
