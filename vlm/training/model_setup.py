"""The model a training run starts from: a named architecture with overrides, or saved weights.

- ``model: NAME`` plus ``model_overrides`` (``model.vision.width=256``) builds a fresh model
  (``tiny`` when no model is named); the config is resolved by ``training.config.model_config``.
- ``init_from: DIR`` starts from a checkpoint, whose architecture is used. Settings that
  cannot apply to it are refused in one line, not ignored: a ``model`` name or ``model.*``
  override that disagrees with the checkpoint. Two apply: ``model.vision.image_size``
  (``image_size: N``) resamples the ViT position embeddings bicubically, to fine-tune at a
  higher resolution (as in ViT, Dosovitskiy et al. 2021); and when the checkpoint is a CLIP
  and ``model`` names a CoCa, the towers are loaded and a fresh caption decoder (the named
  config's, with ``model.decoder.*``) is added: the LiT-style recipe (Zhai et al. 2022) of
  training a decoder on a frozen encoder.
- ``pos_embed_init: sincos`` starts a fresh ViT's (still learned) position
  embeddings from 2-D sine-cosine values, as in MAE (He et al. 2022) and the
  plain-ViT baselines of Beyer et al. 2022: relative positions are usable from
  the first step, which matters for short CPU schedules on small data.
- ``freeze`` turns off gradients of whole towers; ``grad_checkpointing`` trades
  compute for memory.

    model, tokenizer = build_model(cfg)   # tokenizer is None unless loaded with the weights
"""

from __future__ import annotations

from typing import Any

import torch

from vlm.io import configio
from vlm.model.config import DecoderConfig, ModelConfig, get_config
from vlm.errors import CheckpointError
from vlm.training.config import DEFAULT_MODEL, model_config  # noqa: F401  (model_config: re-exported)


def build_model(cfg):
    """(model, tokenizer-or-None) as the training config asks, frozen towers applied."""
    from vlm.model.coca import create_model

    tokenizer = None
    if cfg.init_from:
        model, tokenizer = _from_checkpoint(cfg)
    else:
        model = create_model(model_config(cfg))
        if cfg.pos_embed_init == "sincos":
            init_sincos_(model.visual)
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
    from vlm.io.checkpoint import load_pretrained, load_weights, read_config
    from vlm.model.coca import CoCa

    ckpt_cfg, _ = read_config(cfg.init_from)
    overrides = dict(cfg.model_overrides or {})
    image_size = (overrides.get("vision") or {}).get("image_size")
    wanted = get_config(cfg.model) if cfg.model else None
    fresh_decoder = ckpt_cfg.model_type == "clip" and wanted is not None and wanted.model_type == "coca"
    _refuse_what_cannot_apply(cfg, ckpt_cfg, wanted, fresh_decoder)
    source, tokenizer = load_pretrained(cfg.init_from)
    source.train()
    if fresh_decoder:
        dec = configio.to_dict(wanted.decoder) if wanted.decoder is not None else configio.to_dict(DecoderConfig())
        dec = configio.merge(dec, overrides.get("decoder") or {})
        # the decoder reads the text tower's token embeddings and predicts its vocabulary
        dec.update(width=source.cfg.text.width, vocab_size=source.cfg.text.vocab_size,
                   context_length=min(dec["context_length"], source.cfg.text.context_length))
        raw = configio.merge(source.cfg.to_dict(), {"model_type": "coca", "decoder": dec})
        model = CoCa(configio.from_dict(ModelConfig, raw, f"init_from={cfg.init_from}", prefix="model."))
        state = source.state_dict()
        own = model.state_dict()
        missing = [k for k in own if k not in state and not k.startswith("decoder.")]
        if missing:
            raise CheckpointError(f"{cfg.init_from}: cannot initialise the towers (missing {missing[0]})")
        load_weights(model, {**{k: v for k, v in own.items() if k.startswith("decoder.")}, **state},
                     cfg.init_from)
        source = model
    if image_size is not None and image_size != source.cfg.vision.image_size:
        try:
            source.set_image_size(int(image_size))  # bicubic position-embedding resample
        except ValueError as e:
            raise ValueError(f"model.vision.image_size={image_size}: {e}") from None
    return source, tokenizer


def _refuse_what_cannot_apply(cfg, ckpt_cfg: ModelConfig, wanted, fresh_decoder: bool) -> None:
    """One line for a setting that ``init_from`` would otherwise silently ignore."""
    where = f"init_from={cfg.init_from}"
    if wanted is not None and not fresh_decoder:
        differ = _differences(configio.to_dict(model_config(cfg)), configio.to_dict(ckpt_cfg))
        if differ:
            key, mine, theirs = differ[0]
            raise ValueError(f"model={cfg.model}: cannot apply with {where}, whose architecture is used "
                             f"(model.{key} is {mine!r} here and {theirs!r} there); leave model out")
    for key, value in configio.leaves(cfg.model_overrides or {}):
        if key == "vision.image_size" or (fresh_decoder and key.startswith("decoder.")):
            continue
        theirs = _lookup(configio.to_dict(ckpt_cfg), key)
        if theirs != value:
            raise ValueError(f"model.{key}={value!r}: cannot apply with {where}, whose architecture is used "
                             f"(it has {theirs!r}); only model.vision.image_size applies"
                             + (", and model.decoder.* when a CLIP checkpoint gets a fresh decoder"
                                if ckpt_cfg.model_type == "clip" else ""))


def _lookup(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _differences(a: dict, b: dict) -> list:
    """(dotted key, a's value, b's value) for every leaf that differs, skipping vision.image_size."""
    out = []
    for key, value in configio.leaves(a):
        if key != "vision.image_size" and _lookup(b, key) != value:
            out.append((key, value, _lookup(b, key)))
    return out
