"""Import a Hugging Face ``transformers`` ``ViTForImageClassification`` directory
(Dosovitskiy et al. 2021) as a vlm ``ImageClassifier``, exactly, without importing transformers.

Reads ``config.json`` (ViTConfig: hidden_size, num_hidden_layers,
num_attention_heads, intermediate_size, layer_norm_eps, image_size, patch_size,
``id2label``), the weights and ``preprocessor_config.json``
(ViTImageProcessor: squash to ``size``, rescale, normalise). ``vlm convert hf
DIR`` and ``hf:NAME`` pick this importer when ``model_type`` is ``"vit"``.

Weight layout: ``vit.encoder.layer.N.attention.attention.{query,key,value}`` are
concatenated into the fused ``qkv``; ``layernorm_before/after`` -> ``norm1/2``;
``intermediate.dense`` / ``output.dense`` -> ``mlp.fc1/fc2``; ``vit.layernorm``
-> ``visual.norm_post``; ``classifier`` -> ``head``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vlm.classify.model import ClassifierConfig, ImageClassifier
from vlm.model.config import PreprocessConfig, VisionConfig
from vlm.errors import CheckpointError

_LAYER = re.compile(r"vit\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_PARTS = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.out_proj",
          "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v"}
_PLAIN = {"vit.embeddings.patch_embeddings.projection.weight": "visual.patch_embed.weight",
          "vit.embeddings.patch_embeddings.projection.bias": "visual.patch_embed.bias",
          "vit.layernorm.weight": "visual.norm_post.weight", "vit.layernorm.bias": "visual.norm_post.bias",
          "classifier.weight": "head.weight", "classifier.bias": "head.bias"}


def is_hf_vit_config(hf: dict) -> bool:
    return hf.get("model_type") == "vit"


def vision_config_from_hf_vit(hf: dict, source) -> VisionConfig:
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported (gelu)")
    if not hf.get("qkv_bias", True):
        raise CheckpointError(f"{source}: qkv_bias=false is not supported")
    if int(hf.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{source}: num_channels={hf.get('num_channels')} is not supported (RGB)")
    width = int(hf.get("hidden_size", 768))
    return VisionConfig(image_size=int(hf.get("image_size", 224)), patch_size=int(hf.get("patch_size", 16)),
                        width=width, layers=int(hf.get("num_hidden_layers", 12)),
                        heads=int(hf.get("num_attention_heads", 12)),
                        mlp_ratio=int(hf.get("intermediate_size", 3072)) / width, act="gelu", cls_token=True,
                        pool="cls", norm_eps=float(hf.get("layer_norm_eps", 1e-12)), norm_pre=False,
                        patch_bias=True)


def labels_from_hf(hf: dict, n: int, source) -> list[str]:
    id2label = hf.get("id2label") or {}
    try:
        labels = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in range(n)]
    except KeyError:
        raise CheckpointError(f"{source}: id2label does not name all {n} classes of the classifier") from None
    return labels


def convert_hf_vit_state(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        m = _LAYER.match(key)
        if m:
            i, part, kind = m.groups()
            dst = f"visual.transformer.blocks.{i}."
            if part in _QKV:
                qkv.setdefault((dst, kind), {})[_QKV[part]] = value
            elif part in _PARTS:
                out[f"{dst}{_PARTS[part]}.{kind}"] = value
            else:
                unknown.append(key)
        elif key in _PLAIN:
            out[_PLAIN[key]] = value
        elif key == "vit.embeddings.cls_token":
            out["visual.cls_token"] = value.reshape(-1)  # (1, 1, W) -> (W,)
        elif key == "vit.embeddings.position_embeddings":
            out["visual.pos_embed"] = value.reshape(value.shape[-2], value.shape[-1])  # (1, 1+N, W) -> (1+N, W)
        elif not key.startswith("vit.pooler."):  # the pooler is unused by ViTForImageClassification
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} weights a ViTForImageClassification does not have "
                              f"(e.g. {unknown[0]})")
    for (dst, kind), parts in qkv.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: incomplete attention in {dst}: no {missing[0]} {kind}")
        out[f"{dst}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def convert_hf_vit_dir(directory, hf: dict) -> ImageClassifier:
    from vlm.classify.checkpoint import build_with_weights
    from vlm.convert.hf_files import find_weights, preprocess_from_hf, read_json
    from vlm.convert.state_io import load_state_file

    directory = Path(directory)
    source = directory / "config.json"
    vision = vision_config_from_hf_vit(hf, source)
    weights = find_weights(directory)
    state = convert_hf_vit_state(load_state_file(weights), weights)
    if "head.weight" not in state:
        raise CheckpointError(f"{weights}: no classifier weights (a ViTModel, not a ViTForImageClassification)")
    n = state["head.weight"].shape[0]
    pp_path = directory / "preprocessor_config.json"
    if pp_path.is_file():
        pre = preprocess_from_hf(read_json(pp_path), vision.image_size, source=pp_path)
    else:  # ViTImageProcessor's defaults
        pre = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash",
                             interpolation="bilinear", crop_rounding="floor")
    cfg = ClassifierConfig(labels=labels_from_hf(hf, n, source), vision=vision, embed_dim=None, feature="pooled",
                           preprocess=pre)
    return build_with_weights(cfg, state, weights).eval()
