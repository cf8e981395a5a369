"""Random but non-degenerate weights, for proving a converter exact without downloading any.

Freshly initialised models make poor witnesses: LayerNorm gains of exactly 1,
zero biases and tiny projections give nearly constant embeddings and flat
logits, so a wrong mapping can still agree to 1e-4. ``randomize_`` draws every
parameter afresh (matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), LayerNorm
gains ~ 1 + N(0, 0.5²), scalars such as the logit scale set to log 10), which
makes embeddings vary across inputs and caption logits spread out. It also
overwrites open_clip parameters that are left uninitialised (``torch.empty``).

``shrink_open_clip_cfg`` keeps every structural switch of an open_clip model config
(attentional pooler, appended CLS, decoder) at tiny width and depth, for fast tests.

A test helper, not part of the package: used by tests/test_convert_*.py, and by scripts/check_parity.py
and benchmarks/generate.py (which put tests/ on sys.path).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

_NORM_WORDS = ("ln", "norm", "layer_norm", "layrnorm")


def randomize_(model: nn.Module, seed: int = 0, logit_gain: float = 1.0) -> nn.Module:
    """Redraw every parameter of ``model`` in place (see the module docstring); returns it.

    ``logit_gain`` multiplies output heads named like an LM head / decoder
    projection, to spread caption logits so greedy choices have clear margins.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.lower().split(".")
            if p.ndim == 0 or p.numel() == 1:
                p.fill_(math.log(10.0))
            elif p.ndim == 1 and name.endswith("weight") and any(w in part for part in parts for w in _NORM_WORDS):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                # open_clip's ``x @ proj`` matrices are (in, out); nn.Linear / conv weights are (out, in, ...)
                transposed = p.ndim == 2 and not name.endswith("weight") and "proj" in parts[-1]
                fan_in = p.shape[0] if transposed else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
                if name in ("text_decoder.text_projection", "decoder.lm_head.weight"):
                    p.mul_(logit_gain)
    return model


def shrink_open_clip_cfg(model_cfg: dict) -> dict:
    """An open_clip model config at tiny width and depth, every structural switch kept."""
    cfg = copy.deepcopy(model_cfg)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    v.update(width=48, layers=2, head_width=16, image_size=2 * v["patch_size"])
    if v.get("attentional_pool"):
        v.update(attn_pooler_queries=6, attn_pooler_heads=2)
    t.update(width=32, layers=2, heads=2)
    cfg["embed_dim"] = 32 if "multimodal_cfg" in cfg else 24  # CoCa: decoder width == embed_dim
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(width=32, layers=2, heads=2)
    return cfg
