"""Import a Hugging Face ``transformers`` CLIPModel directory (Radford et al. 2021, CLIP).

Reads the files ``CLIPModel.save_pretrained`` / the Hub write, without importing
transformers: ``config.json`` (CLIPConfig: text_config, vision_config,
projection_dim), the weights (``model.safetensors``, ``pytorch_model.bin`` or a
sharded index), the tokenizer (``vocab.json`` + ``merges.txt`` or
``tokenizer.json``, which must be CLIP's byte-level BPE) and
``preprocessor_config.json`` (CLIPImageProcessor: size, crop_size, image_mean,
image_std, resample). The result is a vlm ``CLIP`` computing the same image and
text features as ``get_image_features`` / ``get_text_features``.

    vlm convert hf ./clip-vit-base-patch32 --out ckpt/
    >>> model, tokenizer = convert_hf_dir("./clip-vit-base-patch32")

Weight layout: ``{text,vision}_model.encoder.layers.N.self_attn.{q,k,v}_proj``
are concatenated into vlm's fused ``qkv``; ``layer_norm1/2`` -> ``norm1/2``;
``pre_layrnorm``/``post_layernorm`` -> ``norm_pre``/``norm_post``; the position
``nn.Embedding`` tables become plain parameters.
"""

from __future__ import annotations

import copy
import gzip
import re
from pathlib import Path
from typing import Any, Optional

import torch

from vlm.model.config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from vlm.convert.hf_files import find_weights, preprocess_from_hf, read_json
from vlm.errors import CheckpointError

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for configs that omit keys.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


def _square(value, what: str, source) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{source}: non-square {what} {tuple(value)} is not supported")
        value = value[0]
    return int(value)


# -------------------------------------------------------------------------- config


def config_from_hf(hf: dict, preprocess: Optional[PreprocessConfig] = None, source="config.json") -> ModelConfig:
    """A vlm ``clip`` config from a transformers CLIPConfig dict."""
    if hf.get("model_type", "clip") != "clip":
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not a CLIP model")
    t = {**_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    v = {**_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    for name, sub in (("text", t), ("vision", v)):
        if sub["hidden_act"] not in _ACTS:
            raise CheckpointError(f"{source}: {name}_config.hidden_act {sub['hidden_act']!r} is not supported "
                                  f"(quick_gelu or gelu)")
    eos = t.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    if eos == 2:  # configs written before transformers PR #24773 pool at argmax(ids): the highest id, end-of-text
        eos = t["vocab_size"] - 1
    vision = VisionConfig(image_size=_square(v["image_size"], "image_size", source),
                          patch_size=_square(v["patch_size"], "patch_size", source), width=v["hidden_size"],
                          layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                          mlp_ratio=v["intermediate_size"] / v["hidden_size"], act=_ACTS[v["hidden_act"]],
                          cls_token=True, pool="cls", norm_eps=float(v["layer_norm_eps"]))
    text = TextConfig(vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"],
                      width=t["hidden_size"], layers=t["num_hidden_layers"], heads=t["num_attention_heads"],
                      mlp_ratio=t["intermediate_size"] / t["hidden_size"], act=_ACTS[t["hidden_act"]], pool="eot",
                      eot_id=int(eos), pad_id=0, norm_eps=float(t["layer_norm_eps"]))
    return ModelConfig(model_type="clip", embed_dim=hf.get("projection_dim", 512), vision=vision, text=text,
                       decoder=None, preprocess=preprocess or PreprocessConfig(),
                       init_logit_scale=float(hf.get("logit_scale_init_value", 2.6592)), tokenizer="clip_bpe")


# --------------------------------------------------------------------- state dict

_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {"layer_norm1.": "norm1.", "layer_norm2.": "norm2.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.",
                  "self_attn.out_proj.": "attn.out_proj."}
_PLAIN = {
    "text_model.embeddings.token_embedding.weight": "text.token_embed.weight",
    "text_model.embeddings.position_embedding.weight": "text.pos_embed",
    "vision_model.embeddings.class_embedding": "visual.cls_token",
    "vision_model.embeddings.patch_embedding.weight": "visual.patch_embed.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.pos_embed",
    "text_projection.weight": "text.proj.weight",
    "visual_projection.weight": "visual.proj.weight",
    "logit_scale": "logit_scale",
}
_PREFIXES = {"text_model.final_layer_norm.": "text.norm_final.", "vision_model.pre_layrnorm.": "visual.norm_pre.",
             "vision_model.post_layernorm.": "visual.norm_post."}
_IGNORED = re.compile(r".*position_ids$")


def convert_hf_state_dict(state: dict[str, torch.Tensor], source="weights") -> dict[str, torch.Tensor]:
    """transformers CLIPModel names -> vlm CLIP names (q/k/v concatenated into qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        if key in _PLAIN:
            out[_PLAIN[key]] = value.reshape(()) if key == "logit_scale" else value
            continue
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            out[_PREFIXES[prefix] + key[len(prefix):]] = value
            continue
        m = _LAYER.match(key)
        if m is None:
            unknown.append(key)
            continue
        tower = "text" if m[1] == "text" else "visual"
        dst = f"{tower}.transformer.blocks.{m[2]}."
        if pm := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", m[3]):
            qkv.setdefault((dst, pm[2]), {})[pm[1]] = value
            continue
        rest = next((r for r in _LAYER_RENAMES if m[3].startswith(r)), None)
        if rest is None:
            unknown.append(key)
            continue
        out[dst + _LAYER_RENAMES[rest] + m[3][len(rest):]] = value
    if unknown:
        raise CheckpointError(f"{source}: not a transformers CLIPModel checkpoint vlm can read: "
                              f"{len(unknown)} unknown tensors (e.g. {unknown[0]})")
    for (dst, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))[0]
            raise CheckpointError(f"{source}: incomplete attention in {dst}: no {missing}_proj.{kind}")
        out[f"{dst}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ---------------------------------------------------------------------- tokenizer


def _bpe_files(directory: Path) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) from vocab.json + merges.txt, or from tokenizer.json."""
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        vocab = read_json(directory / "vocab.json")
        lines = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        return vocab, merges
    if (directory / "tokenizer.json").is_file():
        model = read_json(directory / "tokenizer.json").get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return model.get("vocab", {}), merges
    raise CheckpointError(f"{directory}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")


def tokenizer_from_hf(directory, context_length: int):
    """vlm's CLIP BPE tokenizer, after checking the directory's vocabulary is exactly CLIP's.

    vlm's tokenizer follows open_clip's text cleaning (ftfy, HTML unescape); the
    ids equal ``CLIPTokenizer``'s on ordinary text (tests/test_tokenizer_parity.py).
    """
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer, find_clip_bpe_vocab

    directory = Path(directory)
    vocab, merges = _bpe_files(directory)
    ref = find_clip_bpe_vocab()
    with gzip.open(ref, "rt", encoding="utf-8") as fh:
        ref_merges = [ln for ln in fh.read().split("\n")[1:] if ln][: len(merges) or 1]
    tok = CLIPBPETokenizer(ref, context_length=context_length)
    if merges != ref_merges[: len(merges)] or len(merges) != tok.vocab_size - 514:
        raise CheckpointError(f"{directory}: the tokenizer's BPE merges differ from CLIP's; only the CLIP "
                              f"vocabulary is supported")
    specials = {"<|startoftext|>": tok.sot_id, "<|endoftext|>": tok.eot_id}
    for piece, idx in vocab.items():
        want = specials.get(piece)
        if want is None:
            want = tok._piece_to_id.get(piece)
        if want != idx:
            raise CheckpointError(f"{directory}: the tokenizer's vocabulary differs from CLIP's "
                                  f"({piece!r} has id {idx}); only the CLIP vocabulary is supported")
    if len(vocab) != tok.vocab_size:
        raise CheckpointError(f"{directory}: the tokenizer has {len(vocab)} tokens, CLIP's has {tok.vocab_size}")
    return tok


# ---------------------------------------------------------------------- the model


def convert_hf_dir(directory) -> tuple[Any, Any]:
    """(model, tokenizer) from a transformers CLIPModel directory; the model is in eval mode.

    A ViTForImageClassification directory gives (ImageClassifier, None) (``vlm.convert.hf_vit``)."""
    from vlm.io.checkpoint import load_weights
    from vlm.convert.state_io import load_state_file
    from vlm.model.coca import CLIP

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    hf = read_json(directory / "config.json")
    from vlm.convert.hf_vit import convert_hf_vit_dir, is_hf_vit_config

    if is_hf_vit_config(hf):
        return convert_hf_vit_dir(directory, hf), None
    cfg = config_from_hf(hf, source=directory / "config.json")
    pp_path = directory / "preprocessor_config.json"
    if pp_path.is_file():
        cfg.preprocess = preprocess_from_hf(read_json(pp_path), cfg.vision.image_size, source=pp_path)
    weights = find_weights(directory)
    state = convert_hf_state_dict(load_state_file(weights), source=weights)
    with torch.device("meta"):
        model = CLIP(copy.deepcopy(cfg))
    model = model.to_empty(device="cpu")
    load_weights(model, state, weights)
    tokenizer = tokenizer_from_hf(directory, cfg.text.context_length)
    return model.eval(), tokenizer
