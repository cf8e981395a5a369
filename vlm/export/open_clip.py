"""``vlm export open_clip``: a vlm CLIP or CoCa as an open_clip state dict plus its model config.

Writes ``open_clip_model.safetensors`` and ``open_clip_config.json`` (``{"model_cfg",
"preprocess_cfg"}``, the layout of open_clip's Hub repos), so either of these loads it:

    open_clip.create_model_and_transforms("local-dir:exported/open_clip")
    open_clip.create_model("coca_ViT-B-32", pretrained="exported/open_clip/open_clip_model.safetensors")
    (the second where the manifest names a built-in architecture, ``"arch"`` in export.json)

The names and layouts are ``vlm.convert.open_clip``'s tables read backwards (``_PLAIN``,
``_NORMS``, ``_TRANSPOSED``, ``_BLOCK_DESTS`` with ``_BLOCK_RENAMES`` / ``_CROSS_RENAMES``);
vlm's fused ``qkv`` is open_clip's ``in_proj_weight``, cross-attention's ``q_proj`` +
``kv_proj`` are concatenated back, the attentional pooler gets separate q/k/v weights where
its key width differs from its query width (as ``nn.MultiheadAttention`` stores them). The
model config is ``config_from_open_clip`` inverted and checked by converting it forward
again: it must give back the model's own config. open_clip -> vlm -> open_clip is bit-exact.

Refused, in one line with the reason: a SentencePiece tokenizer (open_clip's configs name
CLIP's BPE or a Hub tokenizer), a CoCa text tower with the corrected CLS mask (open_clip's
configs build only the legacy one its released weights use), image tokens narrower or wider
than the decoder, mixed activations or LayerNorm epsilons open_clip cannot set.
"""

from __future__ import annotations

import re

import torch

from vlm.export.common import ExportRefused, tokenizer_kind

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def _refuse(source: str, why: str):
    raise ExportRefused(f"{source}: cannot be an open_clip model: {why}")


def open_clip_config(cfg, tokenizer, source: str = "model") -> dict:
    """The open_clip model config of a vlm config; raises ExportRefused where open_clip has no such option."""
    from vlm.convert.open_clip import config_from_open_clip

    v, t, d = cfg.vision, cfg.text, cfg.decoder
    coca = cfg.model_type == "coca"
    if tokenizer_kind(tokenizer) != "clip_bpe":
        _refuse(source, f"its tokenizer is {tokenizer_kind(tokenizer)}; open_clip's model configs name CLIP's "
                        f"byte-level BPE or a Hugging Face Hub tokenizer")
    acts = {v.act, t.act} | ({d.act} if d else set())
    if len(acts) > 1:
        _refuse(source, f"its towers use different activations {sorted(acts)}; open_clip sets one (quick_gelu)")
    eps = {v.norm_eps, t.norm_eps} | ({d.norm_eps} if d else set())
    if eps != {1e-5}:
        _refuse(source, f"LayerNorm epsilon {sorted(eps)}; open_clip's LayerNorm uses 1e-5")
    if v.width % v.heads:
        _refuse(source, "the image tower's width is not a multiple of its heads")
    if coca and t.cls_mask != "legacy":
        _refuse(source, "its text tower masks padding from the CLS token the corrected way; open_clip's CoCa "
                        "configs build only the legacy (shifted) mask its released weights were trained with")
    if not coca and t.pool != "eot":
        _refuse(source, "a CLIP text tower pooled at an appended CLS token; open_clip's CLIP pools end-of-text")
    image_dim = cfg.embed_dim if v.pool == "attn" else v.width
    if coca and image_dim != d.width:
        _refuse(source, f"its image tokens are {image_dim} wide and the decoder {d.width}; open_clip's decoder "
                        f"cross-attends to tokens of its own width")
    vision = {"image_size": v.image_size, "layers": v.layers, "width": v.width, "patch_size": v.patch_size,
              "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio}
    if v.pool == "attn":
        vision.update(attentional_pool=True, attn_pooler_queries=v.attn_pool_queries,
                      attn_pooler_heads=v.attn_pool_heads)
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    if t.pool == "eot" and t.eot_id != t.vocab_size - 1:  # 'argmax' pools at the highest id only
        text.update(pool_type="eos", eos_id=t.eot_id)
    if t.pad_id != 0:
        text["pad_id"] = t.pad_id
    out = {"embed_dim": cfg.embed_dim, "quick_gelu": v.act == "quick_gelu", "vision_cfg": vision, "text_cfg": text}
    if coca:
        vision["output_tokens"] = True
        text.update(embed_cls=True, output_tokens=True)
        out["multimodal_cfg"] = {"context_length": d.context_length, "vocab_size": d.vocab_size, "width": d.width,
                                 "heads": d.heads, "layers": d.layers, "mlp_ratio": d.mlp_ratio}
        out["custom_text"] = True
    back = config_from_open_clip(out, preprocess=cfg.preprocess).to_dict()
    mine = cfg.to_dict()
    if back != mine:
        diff = sorted(_flat_diff(mine, back))
        _refuse(source, f"open_clip's config cannot reproduce {diff[0]}")
    return out


def _flat_diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set(a) | set(b)
    out = set()
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out |= _flat_diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.add(f"{prefix}{k}={x!r}")
    return out


def preprocess_cfg(cfg) -> dict:
    p = cfg.preprocess
    return {"size": [cfg.vision.image_size] * 2, "mode": "RGB", "mean": list(p.mean), "std": list(p.std),
            "interpolation": p.interpolation, "resize_mode": p.resize_mode, "fill_color": 0}


def _inverse_tables():
    from vlm.convert import open_clip as imp

    plain = {v: k for k, v in imp._PLAIN.items()}
    norms = {v: k for k, v in imp._NORMS.items()}
    transposed = {v: k for k, v in imp._TRANSPOSED.items()}
    blocks = {v.split("{}")[0]: k for k, v in imp._BLOCK_DESTS.items()}  # "visual.transformer.blocks." -> ...
    block_renames = [(new, old) for old, new in imp._BLOCK_RENAMES]
    cross_renames = [(new, old) for old, new in imp._CROSS_RENAMES]
    return plain, norms, transposed, blocks, block_renames, cross_renames


def _rename(rest: str, renames) -> str:
    from vlm.convert.open_clip import _rename as forward

    new = forward(rest, renames)
    if new is None:
        raise ExportRefused(f"no open_clip name for vlm weight ...{rest}")
    return new


def to_open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """vlm names/layouts -> open_clip's (the inverse of ``convert_state_dict``), same dtype, same values."""
    plain, norms, transposed, blocks, block_renames, cross_renames = _inverse_tables()
    coca = model.cfg.model_type == "coca"
    out: dict[str, torch.Tensor] = {}
    pool: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if key in plain:
            k = plain[key]
            value = value.reshape(()) if k == "logit_scale" else value
        elif key in transposed:
            k, value = transposed[key], value.t().contiguous()
        elif prefix := next((p for p in norms if key.startswith(p)), None):
            k = norms[prefix] + key[len(prefix):]
        elif key.startswith("visual.attn_pool.attn."):
            pool[key[len("visual.attn_pool.attn."):]] = value
            continue
        elif m := re.match(r"(visual\.transformer\.blocks\.|text\.transformer\.blocks\.)(\d+)\.(.+)$", key):
            k = f"{blocks[m[1]]}.resblocks.{m[2]}." + _rename(m[3], block_renames)
        elif m := re.match(r"decoder\.layers\.(\d+)\.self_block\.(.+)$", key):
            k = f"{blocks['decoder.layers.']}.resblocks.{m[1]}." + _rename(m[2], block_renames)
        elif m := re.match(r"decoder\.layers\.(\d+)\.cross_block\.attn\.(q_proj|kv_proj)\.(weight|bias)$", key):
            pool_key = f"cross.{m[1]}.{m[3]}"
            pool.setdefault(pool_key, {})[m[2]] = value
            continue
        elif m := re.match(r"decoder\.layers\.(\d+)\.cross_block\.(.+)$", key):
            k = f"text_decoder.cross_attn.{m[1]}." + _rename(m[2], cross_renames)
        else:
            raise ExportRefused(f"no open_clip name for vlm weight {key}")
        if not coca and k.startswith("text."):
            k = k[len("text."):]  # open_clip's CLIP keeps its text tower at the top level
        out[k] = value.contiguous()
    for key, parts in list(pool.items()):
        if key.startswith("cross."):
            _, layer, kind = key.split(".")
            out[f"text_decoder.cross_attn.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q_proj"], parts["kv_proj"]])
            del pool[key]
    if pool:
        out.update(_pooler(pool))
    return out


def _pooler(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """q_proj + kv_proj -> nn.MultiheadAttention's packed or separate (kdim != dim) weights."""
    dst = "visual.attn_pool.attn."
    q_w, kv_w = p["q_proj.weight"], p["kv_proj.weight"]
    out = {dst + "in_proj_bias": torch.cat([p["q_proj.bias"], p["kv_proj.bias"]]),
           dst + "out_proj.weight": p["out_proj.weight"], dst + "out_proj.bias": p["out_proj.bias"]}
    if q_w.shape[1] == kv_w.shape[1]:
        out[dst + "in_proj_weight"] = torch.cat([q_w, kv_w])
    else:
        k_w, v_w = kv_w.chunk(2, dim=0)
        out.update({dst + "q_proj_weight": q_w, dst + "k_proj_weight": k_w.contiguous(),
                    dst + "v_proj_weight": v_w.contiguous()})
    return {k: v.contiguous() for k, v in out.items()}


def builtin_arch(cfg) -> str | None:
    """The open_clip built-in architecture name whose config equals this model's, if any."""
    from vlm.convert.open_clip import QUICKGELU_SUFFIX, SUPPORTED_ARCHS, arch_config

    for name in SUPPORTED_ARCHS:
        for arch in (name, name + QUICKGELU_SUFFIX):
            ref = arch_config(arch, preprocess=cfg.preprocess).to_dict()
            if ref == cfg.to_dict():
                return arch
    return None


def export_open_clip(model, tokenizer, out, source: str = "model") -> dict:
    """Write the state dict and config into the empty directory ``out``; returns the config written."""
    import json

    from safetensors.torch import save_file

    model_cfg = open_clip_config(model.cfg, tokenizer, source)
    state = to_open_clip_state_dict(model)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(model.cfg)}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return {**config, "arch": builtin_arch(model.cfg)}
