"""Import a timm Vision Transformer classifier (Dosovitskiy et al. 2021; timm's
``vision_transformer.py``) as a vlm ``ImageClassifier``, exactly.

Reads what timm's ``push_to_hf_hub`` / ``save_for_hf`` write and the Hub holds:
``config.json`` (``architecture``, ``num_classes``, ``pretrained_cfg``,
optional ``model_args`` and ``label_names``) and ``model.safetensors``
(or ``pytorch_model.bin``). The layout (width, depth, heads, patch, LayerNorm
epsilon) comes from timm itself: the architecture is built on the meta device,
so no weights are initialised. Only the plain ViT family is taken (class token,
token pooling, no register tokens, no layer scale, no qk-norm); anything else is
refused with one line.

Labels: ``label_names`` from the config when present, else timm's own ImageNet
metadata (``timm.data.ImageNetInfo``) for 1k / 21k / 11k heads. Preprocessing:
``timm.data.resolve_data_config`` of the checkpoint (input size, interpolation,
crop_pct, mean, std), which ``vlm.io.images.preprocess`` reproduces.

    vlm convert timm ./vit_base_patch16_224 --out ckpt/vit_b16
    >>> model = convert_timm_dir("./vit_base_patch16_224")        # an ImageClassifier

Weight names: ``blocks.N.attn.proj`` -> ``visual.transformer.blocks.N.attn.out_proj``,
``patch_embed.proj`` -> ``visual.patch_embed``, ``norm`` -> ``visual.norm_post``,
``head`` -> ``head``; ``cls_token`` (1, 1, W) and ``pos_embed`` (1, 1+N, W) lose
their leading axes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from vlm.classify.model import ClassifierConfig, ImageClassifier
from vlm.model.config import PreprocessConfig, VisionConfig
from vlm.convert.hf_files import read_json
from vlm.errors import CheckpointError, first_line, how_to_load

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_BLOCK = re.compile(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_PLAIN = {"patch_embed.proj.weight": "visual.patch_embed.weight", "patch_embed.proj.bias": "visual.patch_embed.bias",
          "norm.weight": "visual.norm_post.weight", "norm.bias": "visual.norm_post.bias",
          "head.weight": "head.weight", "head.bias": "head.bias"}
_CROP_MODES = {"center": "shortest", "squash": "squash"}


def vision_config_from_timm(model, source) -> VisionConfig:
    """The vlm ViT layout of a built timm ``VisionTransformer`` (real or on the meta device)."""
    from torch import nn

    name = type(model).__name__
    if name != "VisionTransformer":
        raise CheckpointError(f"{source}: {name} is not a plain timm VisionTransformer")
    blk = model.blocks[0]
    refuse = []
    if getattr(model, "num_reg_tokens", 0):
        refuse.append("register tokens")
    if getattr(model, "no_embed_class", False) or not getattr(model, "cls_token", None) is not None:
        refuse.append("no class token in the position embeddings")
    if getattr(model, "global_pool", "token") != "token":
        refuse.append(f"global_pool={model.global_pool!r}")
    if not isinstance(model.norm_pre, nn.Identity) or not isinstance(model.fc_norm, nn.Identity):
        refuse.append("pre-norm / fc-norm")
    if not isinstance(blk.ls1, nn.Identity) or not isinstance(blk.attn.q_norm, nn.Identity):
        refuse.append("layer scale / qk-norm")
    if getattr(blk.attn, "qkv", None) is None or blk.attn.qkv.bias is None:
        refuse.append("attention without a fused qkv bias")
    if type(blk.mlp.act).__name__ != "GELU" or getattr(blk.mlp.act, "approximate", "none") != "none":
        refuse.append(f"activation {type(blk.mlp.act).__name__}")
    if refuse:
        raise CheckpointError(f"{source}: not a plain ViT ({', '.join(refuse)}); only the plain timm ViT family "
                              f"is supported")
    patch = model.patch_embed.patch_size
    img = model.patch_embed.img_size
    if patch[0] != patch[1] or img[0] != img[1]:
        raise CheckpointError(f"{source}: non-square patches or images are not supported")
    width = model.embed_dim
    return VisionConfig(image_size=int(img[0]), patch_size=int(patch[0]), width=int(width), layers=len(model.blocks),
                        heads=int(blk.attn.num_heads), mlp_ratio=blk.mlp.fc1.out_features / width, act="gelu",
                        cls_token=True, pool="cls", norm_eps=float(model.norm.eps), norm_pre=False, patch_bias=True)


def preprocess_from_timm(data_cfg: dict, source) -> PreprocessConfig:
    """vlm preprocessing equal to ``timm.data.create_transform(**resolve_data_config(...))`` at eval."""
    mode = _CROP_MODES.get(data_cfg.get("crop_mode", "center"))
    interp = data_cfg.get("interpolation", "bicubic")
    if mode is None or interp not in ("bicubic", "bilinear"):
        raise CheckpointError(f"{source}: crop_mode {data_cfg.get('crop_mode')!r} / interpolation {interp!r} "
                              f"is not supported (center or squash; bicubic or bilinear)")
    return PreprocessConfig(mean=tuple(map(float, data_cfg["mean"])), std=tuple(map(float, data_cfg["std"])),
                          resize_mode=mode, interpolation=interp, crop_rounding="round",
                          crop_pct=float(data_cfg.get("crop_pct", 0.875)))


def imagenet_labels(num_classes: int, pretrained_cfg: dict) -> Optional[list[str]]:
    """Class names from timm's own ImageNet metadata, or None: the first name of each synset, with
    the synset id added where two classes share it (ImageNet-1k has two "crane"s and two "maillot"s)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(pretrained_cfg) or {1000: "imagenet-1k"}.get(num_classes)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return None
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(num_classes)]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name} ({info.index_to_label_name(i)})" if counts[name] > 1 else name for i, name in enumerate(names)]


def convert_timm_state(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m:
            i, part, kind = m.groups()
            part = {"attn.proj": "attn.out_proj"}.get(part, part)
            out[f"visual.transformer.blocks.{i}.{part}.{kind}"] = value
        elif key in _PLAIN:
            out[_PLAIN[key]] = value
        elif key == "cls_token":
            out["visual.cls_token"] = value.reshape(-1)  # (1, 1, W) -> (W,)
        elif key == "pos_embed":
            out["visual.pos_embed"] = value.reshape(value.shape[-2], value.shape[-1])  # (1, 1+N, W) -> (1+N, W)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} weights a plain ViT does not have (e.g. {unknown[0]})")
    return out


def from_timm_model(model, labels: Optional[list[str]] = None, source="timm model") -> ImageClassifier:
    """An ``ImageClassifier`` computing the same logits as a timm ViT module (weights copied)."""
    from timm.data import resolve_data_config

    from vlm.classify.checkpoint import build_with_weights

    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    n = model.num_classes
    if n < 2:
        raise CheckpointError(f"{source}: the model has no classifier head (num_classes={n})")
    labels = labels or pcfg.get("label_names") or imagenet_labels(n, pcfg) or [f"class_{i}" for i in range(n)]
    if len(labels) != n:
        raise CheckpointError(f"{source}: {len(labels)} label names for {n} classes")
    cfg = ClassifierConfig(labels=list(labels), vision=vision_config_from_timm(model, source), embed_dim=None,
                           feature="pooled", preprocess=preprocess_from_timm(resolve_data_config({}, model=model),
                                                                             source))
    state = convert_timm_state({k: v.detach() for k, v in model.state_dict().items()}, source)
    return build_with_weights(cfg, state, source).eval()


def convert_timm_dir(directory) -> ImageClassifier:
    """An ``ImageClassifier`` from a timm Hub-style directory (config.json + model.safetensors)."""
    import timm
    from timm.data import resolve_data_config

    from vlm.classify.checkpoint import build_with_weights
    from vlm.convert.state_io import load_state_file

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    cfg_path = directory / "config.json"
    raw = read_json(cfg_path, "timm")
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{cfg_path}: no 'architecture' (not a timm model config)")
    pcfg: dict[str, Any] = dict(raw.get("pretrained_cfg") or {})
    n = int(raw.get("num_classes", pcfg.get("num_classes", 0)) or 0)
    args = {**(raw.get("model_args") or {}), "num_classes": n}
    try:
        with torch.device("meta"):
            ref = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=pcfg, **args)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: timm cannot build {arch!r} ({first_line(e)})") from None
    vision = vision_config_from_timm(ref, cfg_path)
    if n < 2:
        raise CheckpointError(f"{cfg_path}: num_classes={n}: not a classifier (no head)")
    labels = raw.get("label_names") or imagenet_labels(n, {**pcfg, "architecture": arch}) \
        or [f"class_{i}" for i in range(n)]
    if len(labels) != n:
        raise CheckpointError(f"{cfg_path}: {len(labels)} label_names for num_classes={n}")
    pre = preprocess_from_timm(resolve_data_config({}, model=ref), cfg_path)
    weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory}: no weights ({' or '.join(WEIGHT_FILES)})")
    state = convert_timm_state(load_state_file(weights), weights)
    cfg = ClassifierConfig(labels=[str(x) for x in labels], vision=vision, embed_dim=None, feature="pooled",
                           preprocess=pre)
    return build_with_weights(cfg, state, weights).eval()


def load_timm(spec: str) -> ImageClassifier:
    """``timm:NAME``: a local timm directory, else the Hub repo ``timm/NAME`` (or ``ORG/NAME``):
    the Hugging Face cache first, then a download when the Hub can be reached; offline, one line."""
    from vlm.convert.hub import can_reach, hub_endpoint, short_hub_timeouts

    name = f"timm:{spec}"
    if not spec:
        raise CheckpointError("timm: give a timm model name or a directory, e.g. timm:vit_base_patch16_224.augreg2_in21k_ft_in1k")
    path = Path(spec).expanduser()
    if path.is_dir():
        return convert_timm_dir(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise CheckpointError(f"{name}: no such directory")
    repo = spec if "/" in spec else f"timm/{spec}"
    short_hub_timeouts()
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "model.safetensors"]
    try:  # the cache, never touching the network
        return convert_timm_dir(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except CheckpointError:
        raise
    except Exception:
        pass
    where = f"{hub_endpoint()}/{repo}"
    if not can_reach(hub_endpoint()):
        api, cli = how_to_load("timm:/path/to/dir")
        head = (f"{name}: could not download (offline?); download config.json and model.safetensors from {where} "
                f"into a directory and ")
        raise CheckpointError(f"{head}load it with {api}, or convert it once with `vlm convert timm`",
                              cli=f"{head}pass {cli}, or run `vlm convert timm DIR --out OUT`")
    try:
        directory = snapshot_download(repo, allow_patterns=patterns)
    except Exception as e:  # network and hub failures come in many types
        msg = first_line(e)
        raise CheckpointError(f"{name}: could not download from {where} ({msg})") from None
    return convert_timm_dir(directory)
