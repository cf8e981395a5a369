"""``vlm export hf``: a CLIP (or the contrastive towers of a CoCa) as a transformers ``CLIPModel`` directory.

The weight names are those of ``vlm.convert.hf`` read backwards (its ``_PLAIN``,
``_PREFIXES`` and ``_LAYER_RENAMES`` tables inverted; vlm's fused ``qkv`` split into
``q_proj``/``k_proj``/``v_proj``). The directory is written by transformers itself
(``CLIPModel.save_pretrained`` after a strict ``load_state_dict``, ``CLIPTokenizer`` and
``CLIPImageProcessor`` ``save_pretrained``), so it loads with the installed version:

    vlm export hf --model ckpt/clip_b32 --out exported/hf
    >>> CLIPModel.from_pretrained("exported/hf"); CLIPProcessor.from_pretrained("exported/hf")

Refused, in one line with the reason, where a ``CLIPModel`` cannot compute what vlm
computes: a SentencePiece tokenizer, an attentional pooler, a text tower pooled at an
appended CLS token, letterbox ("longest") resizing. A CoCa's caption decoder is left out,
with a note. Preprocessing: ``shortest`` becomes resize-short-side + center crop,
``squash`` a resize to S x S; transformers rounds crop offsets down, which is vlm's
``crop_rounding="floor"`` (models imported from transformers); for open_clip-style
"round" models an image whose resized long side exceeds S by an odd number of pixels is
cropped one pixel apart (a note says so).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vlm.export.common import ExportRefused, tokenizer_kind


def check_hf(model, tokenizer, source: str = "model") -> list[str]:
    """Raise ExportRefused where a CLIPModel cannot express the model; return notes on what is left out."""
    cfg = model.cfg
    if tokenizer_kind(tokenizer) != "clip_bpe":
        raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: its tokenizer is "
                            f"{tokenizer_kind(tokenizer)}, and CLIPModel's CLIPTokenizer is CLIP's byte-level BPE")
    if cfg.text.vocab_size != tokenizer.vocab_size or cfg.text.eot_id != tokenizer.eot_id:
        raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: the text tower has {cfg.text.vocab_size} "
                            f"token embeddings (end-of-text id {cfg.text.eot_id}), CLIP's tokenizer "
                            f"{tokenizer.vocab_size} (end-of-text id {tokenizer.eot_id})")
    if cfg.vision.pool == "attn":
        raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: the image tower ends in an attentional "
                            f"pooler (CoCa), and CLIPModel pools the CLS token")
    if cfg.text.pool != "eot":
        raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: the text tower pools an appended CLS "
                            f"token (CoCa), and CLIPModel pools at the end-of-text token")
    if cfg.preprocess.resize_mode == "longest":
        raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: its preprocessing pads the long side "
                            f"(resize_mode 'longest'), which CLIPImageProcessor cannot do")
    for name, sub in (("vision", cfg.vision), ("text", cfg.text)):
        if (sub.mlp_ratio * sub.width) % 1:
            raise ExportRefused(f"{source}: cannot be a transformers CLIPModel: {name} MLP width "
                                f"{sub.mlp_ratio} x {sub.width} is not a whole number")
    notes = []
    if cfg.decoder is not None:
        notes.append("the caption decoder is left out: a CLIPModel has only the contrastive towers "
                     "(use `vlm export onnx` or `vlm export open_clip` to keep it)")
    if cfg.preprocess.resize_mode == "shortest" and cfg.preprocess.crop_rounding == "round":
        notes.append("CLIPImageProcessor rounds center-crop offsets down; vlm rounds them to nearest, so an image "
                     "whose resized long side exceeds the crop by an odd number of pixels is cropped one pixel apart")
    return notes


def _inverse_tables():
    from vlm.convert import hf as imp

    plain = {v: k for k, v in imp._PLAIN.items()}
    prefixes = {v: k for k, v in imp._PREFIXES.items()}
    layer = {v: k for k, v in imp._LAYER_RENAMES.items()}
    return plain, prefixes, layer


_BLOCK = re.compile(r"(text|visual)\.transformer\.blocks\.(\d+)\.(.+)$")


def to_hf_state_dict(model) -> dict[str, torch.Tensor]:
    """vlm CLIP towers -> transformers CLIPModel names (the inverse of ``convert_hf_state_dict``)."""
    plain, prefixes, layer = _inverse_tables()
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("decoder."):
            continue
        value = value.detach().float().contiguous()
        if key in plain:
            out[plain[key]] = value
            continue
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            out[prefixes[prefix] + key[len(prefix):]] = value
            continue
        m = _BLOCK.match(key)
        if m is None:
            raise ExportRefused(f"no transformers CLIPModel name for vlm weight {key}")
        dst = f"{'text' if m[1] == 'text' else 'vision'}_model.encoder.layers.{m[2]}."
        if qm := re.match(r"attn\.qkv\.(weight|bias)$", m[3]):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{dst}self_attn.{name}_proj.{qm[1]}"] = part.contiguous()
            continue
        rest = next((r for r in layer if m[3].startswith(r)), None)
        if rest is None:
            raise ExportRefused(f"no transformers CLIPModel name for vlm weight {key}")
        out[dst + layer[rest] + m[3][len(rest):]] = value
    return out


def hf_config(model, tokenizer):
    from transformers import CLIPConfig

    cfg = model.cfg
    v, t = cfg.vision, cfg.text
    text = dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=int(t.mlp_ratio * t.width),
                num_hidden_layers=t.layers, num_attention_heads=t.heads, max_position_embeddings=t.context_length,
                hidden_act=t.act, layer_norm_eps=t.norm_eps, projection_dim=cfg.embed_dim,
                bos_token_id=tokenizer.sot_id, eos_token_id=t.eot_id, pad_token_id=tokenizer.pad_id)
    vision = dict(hidden_size=v.width, intermediate_size=int(v.mlp_ratio * v.width), num_hidden_layers=v.layers,
                  num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size, num_channels=3,
                  hidden_act=v.act, layer_norm_eps=v.norm_eps, projection_dim=cfg.embed_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                      logit_scale_init_value=float(model.logit_scale.detach()))


def image_processor(cfg):
    """A CLIPImageProcessor with vlm's preprocessing (PIL's resample ids: 3 bicubic, 2 bilinear)."""
    from transformers import CLIPImageProcessor

    p, S = cfg.preprocess, cfg.vision.image_size
    resample = {"bicubic": 3, "bilinear": 2}[p.interpolation]
    if p.resize_mode == "squash":
        size, crop, do_crop = {"height": S, "width": S}, {"height": S, "width": S}, False
    else:
        size, crop, do_crop = {"shortest_edge": S}, {"height": S, "width": S}, True
    return CLIPImageProcessor(do_resize=True, size=size, resample=resample, do_center_crop=do_crop, crop_size=crop,
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(p.mean),
                              image_std=list(p.std), do_convert_rgb=True)


def _write_tokenizer(tokenizer, out: Path):
    """CLIPTokenizer files (vocab.json + merges.txt) from vlm's CLIP BPE vocabulary; transformers adds the rest."""
    from transformers import CLIPTokenizer

    vocab = {piece: i for i, piece in enumerate(tokenizer._id_to_piece)}
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = sorted(tokenizer._ranks, key=tokenizer._ranks.get)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                    encoding="utf-8")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=tokenizer.context_length)


def export_hf(model, tokenizer, out: Path, source: str = "model") -> list[str]:
    """Write a CLIPModel directory into the empty directory ``out``; returns the notes."""
    from transformers import CLIPModel, CLIPProcessor

    notes = check_hf(model, tokenizer, source)
    hf_cfg = hf_config(model, tokenizer)
    with torch.device("meta"):
        clip = CLIPModel(hf_cfg)
    clip = clip.to_empty(device="cpu")
    state = to_hf_state_dict(model)
    own = clip.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ExportRefused(f"{source}: weights do not map onto a CLIPModel "
                            f"({(missing or unexpected)[0]} {'missing' if missing else 'unexpected'})")
    clip.load_state_dict(state, strict=False)
    for name, buf in clip.named_buffers():  # non-persistent position ids left empty by the meta build
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    clip.eval().save_pretrained(out, safe_serialization=True)
    images = image_processor(model.cfg)
    processor = CLIPProcessor(image_processor=images, tokenizer=_write_tokenizer(tokenizer, out))
    processor.save_pretrained(out)
    images.save_pretrained(out)  # preprocessor_config.json too, the file transformers 4 (and `vlm convert hf`) read
    return notes
