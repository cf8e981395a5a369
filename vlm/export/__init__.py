"""Export vlm models to ONNX, Hugging Face transformers and open_clip, each proven to compute the same thing.

    vlm export onnx MODEL --out DIR        # image/text encoders, CoCa decoding step with KV cache
    vlm export hf MODEL --out DIR          # a transformers CLIPModel directory
    vlm export open_clip MODEL --out DIR   # open_clip state dict + model config
    vlm export --list [MODEL]              # which formats each model type (or MODEL) supports

    >>> import vlm
    >>> from vlm.export import export
    >>> export(vlm.load(), "onnx", "exported/onnx")

A model a format cannot express is refused with one line saying why (``ExportRefused``),
before anything is written; output directories appear whole or not at all. The parity
tests are tests/test_export_*.py; docs/export.md shows how to load each result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vlm.export.common import FORMATS, ExportRefused, atomic_dir

__all__ = ["FORMATS", "ExportRefused", "ExportResult", "check", "export", "support_table"]

# What each model type can become (``vlm export --list``); a given model may still be refused, with the reason.
SUPPORT = {
    "clip": {"onnx": "image encoder + text encoder",
             "hf": "CLIPModel (CLIP BPE tokenizer)",
             "open_clip": "CLIP (CLIP BPE tokenizer)"},
    "coca": {"onnx": "image encoder + text encoder + caption decoder step (explicit KV cache)",
             "hf": "contrastive towers only, when they are CLIP-shaped (CLS-pooled image tower, end-of-text "
                   "pooled text tower, CLIP BPE); the caption decoder is left out with a note",
             "open_clip": "CoCa (CLIP BPE tokenizer, legacy CLS mask, image tokens as wide as the decoder)"},
    "classifier": {"onnx": "image -> class logits (label names in the manifest)",
                   "hf": "ViTForImageClassification (a timm / transformers-style ViT without CLIP's ln_pre, "
                         "head on the CLS token)",
                   "open_clip": "refused: open_clip has image-text models only"},
}


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[str]
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # the ONNX manifest / the open_clip config written


def check(model, tokenizer, fmt: str, source: str = "model") -> list[str]:
    """Raise ExportRefused if ``fmt`` cannot express the model; return notes (what is left out)."""
    if fmt not in FORMATS:
        raise ExportRefused(f"unknown export format {fmt!r} (formats: {', '.join(FORMATS)})")
    if model.cfg.model_type == "classifier":
        if fmt == "open_clip":
            raise ExportRefused(f"{source}: cannot be an open_clip model: a supervised classifier (ViT + linear "
                                f"head); open_clip has image-text models only")
        if fmt == "hf":
            from vlm.export.hf_vit import check_hf_vit

            return check_hf_vit(model, source)
        return []
    if fmt == "hf":
        from vlm.export.hf import check_hf

        return check_hf(model, tokenizer, source)
    if fmt == "open_clip":
        from vlm.export.open_clip import open_clip_config

        open_clip_config(model.cfg, tokenizer, source)
        if model.cfg.preprocess.crop_rounding == "floor" and model.cfg.preprocess.resize_mode != "squash":
            return ["open_clip rounds center-crop offsets to nearest; this model was made with offsets rounded "
                    "down (a transformers import), so some image sizes are cropped one pixel apart"]
    return []


def support_table(model=None, tokenizer=None, source: str = "model") -> dict[str, dict[str, str]]:
    """Per model type the formats it supports; with a model, per format 'ok: ...' or 'refused: reason'."""
    if model is None:
        return SUPPORT
    out = {}
    for fmt in FORMATS:
        try:
            notes = check(model, tokenizer, fmt, source)
            out[fmt] = "ok" + (f" ({'; '.join(notes)})" if notes else "")
        except ExportRefused as e:
            out[fmt] = f"refused: {str(e).split(': ', 1)[-1]}"
    return {model.cfg.model_type: out}


def export(pipeline_or_model, fmt: str, out, tokenizer=None, force: bool = False,
           source: Optional[str] = None) -> ExportResult:
    """Export a ``vlm.load()`` pipeline (or a model and its tokenizer) to ``out``, atomically."""
    model = getattr(pipeline_or_model, "model", pipeline_or_model)
    tokenizer = tokenizer or getattr(pipeline_or_model, "tokenizer", None)
    if tokenizer is None and model.cfg.model_type != "classifier":
        raise ExportRefused("export needs the model's tokenizer")
    source = source or getattr(pipeline_or_model, "name", "") or "model"
    notes = check(model, tokenizer, fmt, source)
    out = Path(out)
    details: dict = {}
    with atomic_dir(out, force) as tmp:
        if fmt == "onnx":
            from vlm.export.onnx import export_onnx

            details = export_onnx(model, tokenizer, tmp, source)
        elif fmt == "hf" and model.cfg.model_type == "classifier":
            from vlm.export.hf_vit import export_hf_vit

            notes = export_hf_vit(model, tmp, source)
        elif fmt == "hf":
            from vlm.export.hf import export_hf

            notes = export_hf(model, tokenizer, tmp, source)
        else:
            from vlm.export.open_clip import export_open_clip

            details = export_open_clip(model, tokenizer, tmp, source)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return ExportResult(fmt, out, files, notes, details)
