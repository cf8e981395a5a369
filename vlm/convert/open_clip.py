"""Import open_clip CLIP and CoCa weights into vlm models, tensor for tensor.

Follows open_clip's layouts (Ilharco et al., OpenCLIP; CoCa after Yu et al.
2022): the ViT ``visual.*`` (``conv1``, ``class_embedding``, ``ln_pre``,
``transformer.resblocks``, CoCa's ``attn_pool``, ``ln_post``, ``proj``), the text
tower (``text.*`` for CoCa / custom-text models, top-level ``token_embedding``,
``transformer`` ... for CLIP) and CoCa's ``text_decoder`` (``resblocks`` +
``cross_attn`` + ``text_projection`` as the LM head). ``nn.MultiheadAttention``'s
packed ``in_proj_weight`` maps to vlm's fused ``qkv`` (self-attention) or
``q_proj`` + ``kv_proj`` (cross-attention); open_clip's ``x @ proj`` matrices
become ``nn.Linear`` weights by transposition. Nothing is approximated: the
converted model computes the same function (see tests/test_convert_open_clip.py).

    vlm convert open_clip open_clip_pytorch_model.bin --arch coca_ViT-B-32 --out ckpt/
    >>> model, tok = convert_file("open_clip_pytorch_model.bin", "coca_ViT-B-32")

Architectures: coca_ViT-B-32, coca_ViT-L-14, ViT-B-32, ViT-B-16, ViT-L-14, each
also as ``NAME-quickgelu`` (OpenAI-trained weights use QuickGELU).
open_clip itself is imported only to build preprocessing for a pretrained tag
or to convert a live open_clip model.
"""

from __future__ import annotations

import copy
import re
from typing import Optional

import torch

from vlm.model.config import DecoderConfig, ModelConfig, PreprocessConfig, TextConfig, VisionConfig, get_config
from vlm.errors import CheckpointError, ModelError

SUPPORTED_ARCHS = ("coca_ViT-B-32", "coca_ViT-L-14", "ViT-B-32", "ViT-B-16", "ViT-L-14")
QUICKGELU_SUFFIX = "-quickgelu"

# -------------------------------------------------------------------------- configs


def split_arch(arch: str) -> tuple[str, bool]:
    """'ViT-B-32-quickgelu' -> ('ViT-B-32', True); unknown names raise ModelError."""
    quick = arch.endswith(QUICKGELU_SUFFIX)
    base = arch[: -len(QUICKGELU_SUFFIX)] if quick else arch
    if base not in SUPPORTED_ARCHS:
        raise ModelError(f"open_clip architecture {arch!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_ARCHS)} (each also with {QUICKGELU_SUFFIX})")
    return base, quick


def arch_config(arch: str, preprocess: Optional[PreprocessConfig] = None) -> ModelConfig:
    """The vlm config of a supported open_clip architecture (vlm/model/model_configs/ARCH.json), or of
    an open_clip config file (``ARCH.json`` from open_clip's model_configs, or ``open_clip_config.json``)."""
    if arch.endswith(".json"):
        return config_from_open_clip_file(arch, preprocess)
    base, quick = split_arch(arch)
    cfg = get_config(base)
    if quick:
        set_activation(cfg, "quick_gelu")
    if preprocess is not None:
        cfg.preprocess = preprocess
    return cfg


def set_activation(cfg: ModelConfig, act: str) -> None:
    cfg.vision.act = cfg.text.act = act
    if cfg.decoder is not None:
        cfg.decoder.act = act


# Keys of open_clip's config dataclasses whose values vlm reproduces only at these settings.
_VISION_FIXED = {"ls_init_value": None, "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
                 "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None, "qk_norm": False,
                 "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                 "scale_fc": False, "timm_model_name": None}
_TEXT_FIXED = {"ls_init_value": None, "no_causal_mask": False, "final_ln_after_pool": False, "proj_bias": False,
               "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None, "qk_norm": False,
               "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
               "scale_fc": False, "hf_model_name": None, "pad_id": 0}


def _check_fixed(section: str, cfg: dict, fixed: dict) -> None:
    for key, value in fixed.items():
        if key in cfg and cfg[key] != value and not (value is None and not cfg[key]) \
                and not (key == "block_type" and cfg[key] == "default"):
            raise ModelError(f"open_clip {section}.{key}={cfg[key]!r} is not supported by vlm")
    if cfg.get("block_type") not in (None, "default"):
        raise ModelError(f"open_clip {section}.block_type={cfg['block_type']!r} is not supported by vlm")


def config_from_open_clip(model_cfg: dict, quick_gelu: Optional[bool] = None,
                          preprocess: Optional[PreprocessConfig] = None) -> ModelConfig:
    """Translate an open_clip model config dict (``open_clip.get_model_config(name)``) to a vlm config.

    CoCa (a ``multimodal_cfg`` present) and plain ViT CLIPs are supported; any
    open_clip option vlm does not implement raises ModelError.
    """
    if model_cfg.get("init_logit_bias") is not None:
        raise ModelError("open_clip models with a logit bias (SigLIP-style) are not supported by vlm")
    v, t = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    _check_fixed("vision_cfg", v, _VISION_FIXED)
    _check_fixed("text_cfg", t, _TEXT_FIXED)
    if isinstance(v.get("layers", 12), (list, tuple)):
        raise ModelError("open_clip ResNet image towers are not supported by vlm (ViT only)")
    if isinstance(v.get("attentional_pool"), str):
        raise ModelError(f"open_clip attentional_pool={v['attentional_pool']!r} is not supported by vlm")
    size = v.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelError(f"open_clip non-square image_size {tuple(size)} is not supported by vlm")
        size = size[0]
    quick = bool(model_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
    act = "quick_gelu" if quick else "gelu"
    width = v.get("width", 768)
    attn_pool = bool(v.get("attentional_pool", False))
    vision = VisionConfig(image_size=int(size), patch_size=v.get("patch_size", 16), width=width,
                          layers=v.get("layers", 12), heads=width // v.get("head_width", 64),
                          mlp_ratio=float(v.get("mlp_ratio", 4.0)), act=act, cls_token=True,
                          pool="attn" if attn_pool else "cls",
                          attn_pool_queries=v.get("attn_pooler_queries", 256),
                          attn_pool_heads=v.get("attn_pooler_heads", 8))
    coca = model_cfg.get("multimodal_cfg") is not None
    vocab = t.get("vocab_size", 49408)
    pool_type = t.get("pool_type", "argmax")
    if t.get("embed_cls", False) != coca:
        raise ModelError("open_clip text_cfg.embed_cls must be set exactly for CoCa models in vlm")
    if not coca and pool_type not in ("argmax", "eos"):
        raise ModelError(f"open_clip text_cfg.pool_type={pool_type!r} is not supported by vlm")
    # 'argmax' pools at the highest id, the end-of-text token (the last id of the CLIP vocabulary).
    eot = t.get("eos_id", 2) if pool_type == "eos" else vocab - 1
    text = TextConfig(vocab_size=vocab, context_length=t.get("context_length", 77), width=t.get("width", 512),
                      layers=t.get("layers", 12), heads=t.get("heads", 8), mlp_ratio=float(t.get("mlp_ratio", 4.0)),
                      act=act, pool="cls" if coca else "eot", eot_id=eot, pad_id=t.get("pad_id", 0),
                      cls_mask="legacy" if coca else "correct")
    decoder = None
    if coca:
        m = dict(model_cfg["multimodal_cfg"])
        if m.get("ls_init_value") is not None:
            raise ModelError("open_clip multimodal_cfg.ls_init_value is not supported by vlm")
        decoder = DecoderConfig(vocab_size=vocab, context_length=m.get("context_length", 77),
                                width=m.get("width", 512), layers=m.get("layers", 12), heads=m.get("heads", 8),
                                mlp_ratio=float(m.get("mlp_ratio", 4)), act=act)
    return ModelConfig(model_type="coca" if coca else "clip", embed_dim=model_cfg["embed_dim"], vision=vision,
                       text=text, decoder=decoder, preprocess=preprocess or PreprocessConfig(),
                       tokenizer="clip_bpe")


def config_from_open_clip_file(path, preprocess: Optional[PreprocessConfig] = None) -> ModelConfig:
    """An open_clip model config JSON, bare or wrapped as in the Hub's open_clip_config.json."""
    import json
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        model_cfg = raw.get("model_cfg", raw)
        model_cfg["vision_cfg"], model_cfg["text_cfg"], model_cfg["embed_dim"]
    except FileNotFoundError:
        raise ModelError(f"{path}: no such open_clip config file") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{path}: not an open_clip model config ({type(e).__name__}: {e})") from None
    if preprocess is None and isinstance(raw.get("preprocess_cfg"), dict):
        preprocess = preprocess_from_open_clip(raw["preprocess_cfg"])
    return config_from_open_clip(model_cfg, preprocess=preprocess)


def preprocess_from_open_clip(pp: dict) -> PreprocessConfig:
    """open_clip's PreprocessCfg dict (``model.visual.preprocess_cfg`` or a pretrained tag) -> vlm's."""
    if pp.get("resize_mode", "shortest") not in ("shortest", "squash", "longest"):
        raise ModelError(f"open_clip resize_mode {pp.get('resize_mode')!r} is not supported by vlm")
    if pp.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        raise ModelError(f"open_clip interpolation {pp.get('interpolation')!r} is not supported by vlm")
    default = PreprocessConfig()
    return PreprocessConfig(mean=tuple(float(x) for x in pp.get("mean", default.mean)),
                          std=tuple(float(x) for x in pp.get("std", default.std)),
                          resize_mode=pp.get("resize_mode", "shortest"),
                          interpolation=pp.get("interpolation", "bicubic"))


def tag_settings(arch: str, tag: str) -> tuple[str, PreprocessConfig, dict]:
    """(architecture name with -quickgelu where the tag needs it, preprocessing, open_clip's tag entry)
    for a pretrained tag, from the table in the installed open_clip (no network)."""
    from open_clip import pretrained as oc_pretrained

    if arch.endswith(".json"):
        raise ModelError(f"pretrained tag {tag!r} needs a named architecture, not a config file")
    base, quick = split_arch(arch)
    entry = oc_pretrained.get_pretrained_cfg(arch, tag) or oc_pretrained.get_pretrained_cfg(base, tag)
    if not entry:
        tags = oc_pretrained.list_pretrained_tags_by_model(base)
        raise ModelError(f"open_clip:{arch}@{tag}: unknown pretrained tag {tag!r} for {base} "
                         f"(known: {', '.join(tags)})")
    quick = quick or bool(entry.get("quick_gelu", False))
    return base + (QUICKGELU_SUFFIX if quick else ""), preprocess_from_open_clip(entry), entry


def tags_with_other_preprocessing(arch: str) -> list[str]:
    """Pretrained tags of ``arch`` whose preprocessing differs from the architecture default."""
    from open_clip import pretrained as oc_pretrained

    base, _ = split_arch(arch)
    default = arch_config(base).preprocess
    return [t for t in oc_pretrained.list_pretrained_tags_by_model(base)
            if preprocess_from_open_clip(oc_pretrained.get_pretrained_cfg(base, t)) != default]


# ---------------------------------------------------------------------- state dicts

# open_clip residual-block stacks -> ours ({} is the block index)
_BLOCK_DESTS = {
    "visual.transformer": "visual.transformer.blocks.{}.",
    "text.transformer": "text.transformer.blocks.{}.",
    "text_decoder": "decoder.layers.{}.self_block.",
}
_BLOCK_RENAMES = (("ln_1.", "norm1."), ("ln_2.", "norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
                  ("attn.out_proj.", "attn.out_proj."), ("attn.in_proj_weight", "attn.qkv.weight"),
                  ("attn.in_proj_bias", "attn.qkv.bias"))
_CROSS_RENAMES = (("ln_1_kv.", "norm_kv."),) + _BLOCK_RENAMES[:5]
_PLAIN = {  # open_clip name -> vlm name, applied after the text prefix is normalised to "text."
    "visual.conv1.weight": "visual.patch_embed.weight",
    "visual.class_embedding": "visual.cls_token",
    "visual.positional_embedding": "visual.pos_embed",
    "visual.attn_pool.query": "visual.attn_pool.query",
    "text.token_embedding.weight": "text.token_embed.weight",
    "text.positional_embedding": "text.pos_embed",
    "text.cls_emb": "text.cls_token",
    "logit_scale": "logit_scale",
}
_NORMS = {"visual.ln_pre.": "visual.norm_pre.", "visual.ln_post.": "visual.norm_post.",
          "visual.attn_pool.ln_q.": "visual.attn_pool.norm_q.", "visual.attn_pool.ln_k.": "visual.attn_pool.norm_k.",
          "text.ln_final.": "text.norm_final.", "text_decoder.ln_final.": "decoder.norm_final."}
_TRANSPOSED = {"visual.proj": "visual.proj.weight", "text.text_projection": "text.proj.weight",
               "text_decoder.text_projection": "decoder.lm_head.weight"}
_IGNORED = {"attn_mask", "text.attn_mask", "text_decoder.attn_mask", "input_resolution", "context_length",
            "vocab_size"}
_TEXT_TOP = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _rename(rest: str, renames) -> Optional[str]:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def convert_state_dict(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """open_clip parameter names/layouts -> vlm's. Unknown names raise CheckpointError."""
    out: dict[str, torch.Tensor] = {}
    pool_qkv: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        k = "text." + key if key.startswith(_TEXT_TOP) else key  # CLIP keeps its text tower at the top level
        if key in _IGNORED:
            continue
        if k in _PLAIN:
            out[_PLAIN[k]] = value.reshape(()) if k == "logit_scale" else value
        elif k in _TRANSPOSED:
            out[_TRANSPOSED[k]] = value.t().contiguous()
        elif any(k.startswith(p) for p in _NORMS):
            prefix = next(p for p in _NORMS if k.startswith(p))
            out[_NORMS[prefix] + k[len(prefix):]] = value
        elif k.startswith("visual.attn_pool.attn."):
            pool_qkv[k[len("visual.attn_pool.attn."):]] = value
        elif m := re.match(r"(visual\.transformer|text\.transformer|text_decoder)\.resblocks\.(\d+)\.(.+)$", k):
            new = _rename(m[3], _BLOCK_RENAMES)
            if new is None:
                unknown.append(key)
                continue
            out[_BLOCK_DESTS[m[1]].format(m[2]) + new] = value
        elif m := re.match(r"text_decoder\.cross_attn\.(\d+)\.(.+)$", k):
            dst = f"decoder.layers.{m[1]}.cross_block."
            if m[2] in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if m[2].endswith("weight") else "bias"
                d = value.shape[0] // 3
                out[dst + f"attn.q_proj.{kind}"] = value[:d]
                out[dst + f"attn.kv_proj.{kind}"] = value[d:]
                continue
            new = _rename(m[2], _CROSS_RENAMES)
            if new is None:
                unknown.append(key)
                continue
            out[dst + new] = value
        else:
            unknown.append(key)
    if pool_qkv:
        out.update(_convert_pooler_attention(pool_qkv, source))
    if unknown:
        raise CheckpointError(f"{source}: not an open_clip CLIP/CoCa ViT checkpoint vlm can read: "
                              f"{len(unknown)} unknown tensors (e.g. {unknown[0]})")
    return out


def _convert_pooler_attention(p: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """nn.MultiheadAttention (packed, or separate q/k/v when kdim != dim) -> q_proj + kv_proj."""
    dst = "visual.attn_pool.attn."
    try:
        bias = p["in_proj_bias"]
        d = bias.shape[0] // 3
        if "in_proj_weight" in p:
            q_w, kv_w = p["in_proj_weight"][:d], p["in_proj_weight"][d:]
        else:
            q_w, kv_w = p["q_proj_weight"], torch.cat([p["k_proj_weight"], p["v_proj_weight"]], dim=0)
        return {dst + "q_proj.weight": q_w, dst + "q_proj.bias": bias[:d], dst + "kv_proj.weight": kv_w,
                dst + "kv_proj.bias": bias[d:], dst + "out_proj.weight": p["out_proj.weight"],
                dst + "out_proj.bias": p["out_proj.bias"]}
    except KeyError as e:
        raise CheckpointError(f"{source}: incomplete attentional pooler (no visual.attn_pool.attn.{e.args[0]})") \
            from None


def model_from_state(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "checkpoint"):
    """A vlm model (eval mode) holding the open_clip weights ``state``, checked name by name and shape by shape."""
    from vlm.io.checkpoint import load_weights
    from vlm.model.coca import MODEL_TYPES

    converted = convert_state_dict(state, source)
    with torch.device("meta"):
        model = MODEL_TYPES[cfg.model_type](copy.deepcopy(cfg))
    model = model.to_empty(device="cpu")
    load_weights(model, converted, f"{source} (as {_describe(cfg)})")
    return model.eval()


def _describe(cfg: ModelConfig) -> str:
    v = cfg.vision
    return f"{cfg.model_type} ViT width {v.width}, {v.layers} layers, patch {v.patch_size}"


def from_open_clip_model(oc_model, cfg: ModelConfig):
    """Convert a live open_clip model (e.g. from ``open_clip.create_model_and_transforms``);
    ``cfg`` is its vlm config (``config_from_open_clip(open_clip.get_model_config(arch))``)."""
    return model_from_state(oc_model.state_dict(), cfg, source=type(oc_model).__name__)


def convert_file(path, arch: str, preprocess: Optional[PreprocessConfig] = None):
    """(model, tokenizer) from an open_clip checkpoint file of a supported architecture.

    Preprocessing: ``preprocess`` if given, else the ``preprocess_cfg`` of an
    ``open_clip_config.json`` next to the file (as in Hub repos; its ``quick_gelu`` also applies),
    else the architecture's default.
    """
    from vlm.convert.state_io import load_state_file
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    from pathlib import Path

    sibling = Path(path).parent / "open_clip_config.json"  # Hub repos ship one: preprocessing, activation
    if sibling.is_file():
        found = config_from_open_clip_file(sibling)
        preprocess = preprocess or found.preprocess
        named = not arch.endswith(".json")  # a config file given as --arch states its own activation
        if named and found.vision.act == "quick_gelu" and not arch.endswith(QUICKGELU_SUFFIX):
            arch += QUICKGELU_SUFFIX
    cfg = arch_config(arch, preprocess)
    model = model_from_state(load_state_file(path), cfg, source=str(path))
    return model, CLIPBPETokenizer(context_length=cfg.text.context_length)
