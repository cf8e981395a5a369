"""Model creation for training: a named architecture with overrides, or saved weights.

- ``model: NAME`` plus ``model_overrides`` (``model.vision.width=256``) builds a fresh model.
- ``init_from: DIR`` starts from a checkpoint. When the checkpoint is a CLIP and
  the named architecture is a CoCa, the towers are loaded and a fresh caption
  decoder (the named config's decoder, or one matching the text tower) is added:
  the LiT-style recipe (Zhai et al. 2022) of training a decoder on a frozen encoder.
- ``image_size: N`` resizes the ViT position embeddings bicubically, to
  fine-tune at a higher resolution (as in ViT, Dosovitskiy et al. 2021).
- ``pos_embed_init: sincos`` starts a fresh ViT's (still learned) position
  embeddings from 2-D sine-cosine values, as in MAE (He et al. 2022) and the
  plain-ViT baselines of Beyer et al. 2022: relative positions are usable from
  the first step, which matters for short CPU schedules on small data.
- ``freeze`` turns off gradients of whole towers; ``grad_checkpointing`` trades
  compute for memory.

    model, tokenizer = build_model(cfg)   # tokenizer is None unless loaded with the weights
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Optional

import torch

from vlm.config import DecoderConfig, ModelConfig, get_config
from vlm.errors import CheckpointError


def _apply_overrides(obj, overrides: dict, where: str = "model"):
    """Set nested dataclass fields from a nested dict, naming unknown keys."""
    for key, value in overrides.items():
        if not hasattr(obj, key):
            raise ValueError(f"{where}.{key}: no such model config field")
        current = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            _apply_overrides(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _checked(current, value, f"{where}.{key}"))


def _checked(current, value, where: str):
    """``value`` if it has the type of the field's current value (ints may stand for floats)."""
    number = (int, float)
    if isinstance(current, bool) or current is None:
        ok = current is None or isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, number) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, (tuple, list)):
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok and isinstance(current, tuple) else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise ValueError(f"{where}={value!r}: expected {type(current).__name__} like {current!r}")
    return value


def model_config(cfg) -> ModelConfig:
    """The named architecture with ``model_overrides`` applied and validated."""
    mcfg = copy.deepcopy(get_config(cfg.model))
    _apply_overrides(mcfg, cfg.model_overrides or {})
    if mcfg.model_type == "clip":
        mcfg.decoder = None
    mcfg.validate()
    return mcfg


def build_model(cfg):
    """(model, tokenizer-or-None) as the training config asks, frozen towers applied."""
    from vlm.model import create_model

    tokenizer = None
    if cfg.init_from:
        model, tokenizer = _from_checkpoint(cfg)
    else:
        model = create_model(model_config(cfg))
        if cfg.pos_embed_init == "sincos":
            init_sincos_(model.visual)
    if cfg.image_size is not None and cfg.image_size != model.cfg.vision.image_size:
        model.visual.set_image_size(int(cfg.image_size))  # bicubic position-embedding resize
    for tower in cfg.freeze:
        module = getattr(model, tower, None)
        if module is None:
            raise ValueError(f"freeze: the model has no {tower} tower")
        module.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, tokenizer


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(grid*grid, width) 2-D sine-cosine position codes: half the channels encode the row,
    half the column, each as sin/cos pairs over geometrically spaced frequencies."""
    if width % 4:
        raise ValueError(f"sincos position embeddings need a width divisible by 4, got {width}")
    quarter = width // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))  # (W/4,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    ang_y = ys.reshape(-1, 1) * omega[None]  # (g*g, W/4)
    ang_x = xs.reshape(-1, 1) * omega[None]  # (g*g, W/4)
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)  # (g*g, W)


@torch.no_grad()
def init_sincos_(visual, scale: float = 0.2) -> None:
    """Overwrite the ViT's position embeddings with ``scale`` x 2-D sincos (prefix rows: 0)."""
    pe = visual.pos_embed
    codes = sincos_2d(visual.grid, pe.shape[1]) * scale  # std ~ scale / sqrt(2)
    pe.zero_()
    pe[visual.num_prefix:] = codes.to(pe.dtype)


def _from_checkpoint(cfg):
    from vlm.checkpoint import load_pretrained, load_weights
    from vlm.model import CoCa

    source, tokenizer = load_pretrained(cfg.init_from)
    source.train()
    wanted: Optional[ModelConfig] = get_config(cfg.model) if cfg.model else None
    if source.cfg.model_type == "clip" and wanted is not None and wanted.model_type == "coca":
        mcfg = copy.deepcopy(source.cfg)
        mcfg.model_type = "coca"
        dec = copy.deepcopy(wanted.decoder) if wanted.decoder is not None else DecoderConfig()
        dec.width = mcfg.text.width  # the decoder reads the text tower's token embeddings
        dec.vocab_size = mcfg.text.vocab_size
        dec.context_length = min(dec.context_length, mcfg.text.context_length)
        mcfg.decoder = dec
        _apply_overrides(mcfg, {k: v for k, v in (cfg.model_overrides or {}).items() if k == "decoder"})
        mcfg.validate()
        model = CoCa(mcfg)  # fresh decoder
        state = source.state_dict()
        own = model.state_dict()
        missing = [k for k in own if k not in state and not k.startswith("decoder.")]
        if missing:
            raise CheckpointError(f"{cfg.init_from}: cannot initialise the towers (missing {missing[0]})")
        load_weights(model, {**{k: v for k, v in own.items() if k.startswith("decoder.")}, **state},
                     cfg.init_from)
        return model, tokenizer
    return source, tokenizer
