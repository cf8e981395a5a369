"""``vlm export hf`` for a supervised classifier: a transformers ``ViTForImageClassification`` directory.

The names are ``vlm.convert.hf_vit``'s tables read backwards (``_PLAIN``, ``_PARTS``, ``_QKV``;
vlm's fused ``qkv`` split into query/key/value, the CLS token and position table given
back their (1, 1, W) / (1, 1+N, W) shapes); the label names become ``id2label``. The image
processor reproduces vlm's preprocessing: ``ViTImageProcessor`` for squash resizing, a
``CLIPImageProcessor`` (resize the short side to ``floor(S / crop_pct)``, center crop S)
for resize-and-crop models such as timm imports.

Refused, in one line with the reason: a backbone with CLIP's pre-LayerNorm (``ln_pre``), an
attentional pooler, a head reading the normalised contrastive embedding, letterbox resizing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vlm.export.common import ExportRefused


def _refuse(source: str, why: str):
    raise ExportRefused(f"{source}: cannot be a transformers ViTForImageClassification: {why}")


def check_hf_vit(model, source: str = "model") -> list[str]:
    cfg = model.cfg
    v = cfg.vision
    if v.pool == "attn":
        _refuse(source, "the backbone ends in an attentional pooler; ViT classifies the CLS token")
    if cfg.feature != "pooled":
        _refuse(source, "the head reads the L2-normalised contrastive embedding; ViT's head reads the CLS token")
    if v.norm_pre:
        _refuse(source, "the backbone has CLIP's LayerNorm before the blocks (ln_pre), which ViT does not have")
    if not v.cls_token:
        _refuse(source, "the backbone has no CLS token")
    if cfg.preprocess.resize_mode == "longest":
        _refuse(source, "its preprocessing pads the long side (resize_mode 'longest')")
    if (v.mlp_ratio * v.width) % 1:
        _refuse(source, f"MLP width {v.mlp_ratio} x {v.width} is not a whole number")
    notes = []
    if cfg.preprocess.resize_mode == "shortest" and cfg.preprocess.crop_rounding == "round":
        notes.append("transformers rounds center-crop offsets down; vlm rounds them to nearest, so an image whose "
                     "resized long side exceeds the crop by an odd number of pixels is cropped one pixel apart")
    return notes


def to_hf_vit_state_dict(model) -> dict[str, torch.Tensor]:
    """vlm ImageClassifier -> ViTForImageClassification names (the inverse of ``convert_hf_vit_state``)."""
    import re

    from vlm.convert import hf_vit as imp

    plain = {v: k for k, v in imp._PLAIN.items()}
    parts = {v: k for k, v in imp._PARTS.items()}
    qkv = {v: k for k, v in imp._QKV.items()}
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().float().contiguous()
        if key in plain:
            out[plain[key]] = value
        elif key == "visual.cls_token":
            out["vit.embeddings.cls_token"] = value.reshape(1, 1, -1)
        elif key == "visual.pos_embed":
            out["vit.embeddings.position_embeddings"] = value.unsqueeze(0)
        elif m := re.match(r"visual\.transformer\.blocks\.(\d+)\.(.+)\.(weight|bias)$", key):
            i, part, kind = m.groups()
            dst = f"vit.encoder.layer.{i}."
            if part == "attn.qkv":
                for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{dst}{qkv[name]}.{kind}"] = chunk.contiguous()
            elif part in parts:
                out[f"{dst}{parts[part]}.{kind}"] = value
            else:
                raise ExportRefused(f"no ViTForImageClassification name for vlm weight {key}")
        elif key in ("visual.norm_pre.weight", "visual.norm_pre.bias", "visual.proj.weight"):
            continue  # not read by a pooled-feature head without ln_pre (refused otherwise)
        else:
            raise ExportRefused(f"no ViTForImageClassification name for vlm weight {key}")
    if "vit.embeddings.patch_embeddings.projection.bias" not in out:  # vlm's CLIP-style patch conv has no bias
        out["vit.embeddings.patch_embeddings.projection.bias"] = torch.zeros(model.cfg.vision.width)
    return out


def _image_processor(cfg):
    from transformers import CLIPImageProcessor, ViTImageProcessor

    p, S = cfg.preprocess, cfg.vision.image_size
    resample = {"bicubic": 3, "bilinear": 2}[p.interpolation]
    common = dict(do_resize=True, resample=resample, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=list(p.mean), image_std=list(p.std))
    scale = S if p.crop_pct == 1.0 else math.floor(S / p.crop_pct)  # vlm.io.images: timm's floor(S / crop_pct)
    if p.resize_mode == "squash" and scale == S:
        return ViTImageProcessor(size={"height": S, "width": S}, **common)
    size = {"height": scale, "width": scale} if p.resize_mode == "squash" else {"shortest_edge": scale}
    return CLIPImageProcessor(size=size, do_center_crop=True, crop_size={"height": S, "width": S},
                              do_convert_rgb=True, **common)


def export_hf_vit(model, out: Path, source: str = "model") -> list[str]:
    from transformers import ViTConfig, ViTForImageClassification

    notes = check_hf_vit(model, source)
    cfg, v = model.cfg, model.cfg.vision
    hf_cfg = ViTConfig(hidden_size=v.width, num_hidden_layers=v.layers, num_attention_heads=v.heads,
                       intermediate_size=int(v.mlp_ratio * v.width), hidden_act=v.act, layer_norm_eps=v.norm_eps,
                       image_size=v.image_size, patch_size=v.patch_size, num_channels=3, qkv_bias=True,
                       id2label={i: label for i, label in enumerate(cfg.labels)},
                       label2id={label: i for i, label in enumerate(cfg.labels)})
    # The Hub's names (what ``vlm.convert.hf_vit`` reads); transformers maps them onto its own on loading.
    from safetensors.torch import save_file

    hf_cfg.architectures = ["ViTForImageClassification"]
    hf_cfg.save_pretrained(out)
    save_file(to_hf_vit_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    _, info = ViTForImageClassification.from_pretrained(out, output_loading_info=True)
    bad = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise ExportRefused(f"{source}: weights do not map onto a ViTForImageClassification "
                            f"({bad[0].split('_')[0]}: {sorted(info[bad[0]])[0]})")
    _image_processor(cfg).save_pretrained(out)
    return notes

