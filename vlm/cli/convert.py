"""``vlm convert``: turn open_clip or Hugging Face CLIP/CoCa weights into a vlm checkpoint directory.

    vlm convert open_clip open_clip_pytorch_model.bin --arch coca_ViT-B-32 --out ckpt/coca_b32
    vlm convert open_clip laion2b_s34b_b79k --arch ViT-B-32 --out ckpt/clip_b32   # a tag: needs the Hub
    vlm convert hf ./clip-vit-base-patch32 --out ckpt/hf_b32
    vlm convert timm ./vit_base_patch16_224 --out ckpt/vit_b16      # a timm ViT classifier

A timm ViT or a transformers ViTForImageClassification becomes a classifier
checkpoint (vlm.classify), used by ``vlm classify --model DIR`` without labels.

The output is an ordinary checkpoint (config.json + model.safetensors + tokenizer
files, written by ``vlm.io.checkpoint.save_pretrained``), usable with ``--model DIR``
and as ``init_from`` in a training config. OpenAI-trained weights need the
``-quickgelu`` architecture (e.g. ``--arch ViT-B-32-quickgelu``); tags set it themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> Parser:
    from vlm.convert.open_clip import QUICKGELU_SUFFIX, SUPPORTED_ARCHS

    p = Parser(prog="vlm convert", description="Import open_clip or Hugging Face CLIP/CoCa weights.")
    sub = p.add_subparsers(dest="source", metavar="{open_clip,hf,timm}", parser_class=Parser)
    sub.required = True
    oc = sub.add_parser("open_clip", help="an open_clip checkpoint file (or pretrained tag)",
                        description="Convert an open_clip checkpoint file, a directory holding one, or a "
                                    "pretrained tag (downloaded when the Hub can be reached).")
    oc.add_argument("checkpoint", metavar="CHECKPOINT", help="open_clip_pytorch_model.bin / .safetensors, or a tag")
    oc.add_argument("--arch", required=True, metavar="NAME",
                    help=f"one of {', '.join(SUPPORTED_ARCHS)} (add {QUICKGELU_SUFFIX} for OpenAI-trained "
                         f"weights), or an open_clip model config .json file")
    oc.add_argument("--tag", default=None, metavar="TAG",
                    help="the open_clip pretrained tag the file was downloaded for: its preprocessing (mean/std, "
                         "resize) and activation apply (default: an open_clip_config.json next to the file, "
                         "else the architecture's defaults)")
    hf = sub.add_parser("hf", help="a transformers CLIPModel directory",
                        description="Convert a Hugging Face transformers CLIPModel directory (config.json, "
                                    "weights, vocab.json + merges.txt, preprocessor_config.json), or a Hub id.")
    hf.add_argument("directory", metavar="DIR", help="the model directory (or a Hub id when online)")
    tm = sub.add_parser("timm", help="a timm ViT classifier directory (config.json + model.safetensors)",
                        description="Convert a timm Vision Transformer classifier (the Hub layout: config.json with "
                                    "pretrained_cfg, model.safetensors), or a timm model name when online.")
    tm.add_argument("directory", metavar="PATH", help="the timm model directory (or a timm model name when online)")
    for q in (oc, hf, tm):
        q.add_argument("--out", required=True, metavar="DIR", help="the vlm checkpoint directory to write")
        q.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype on disk")
        q.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    return p


def _note_preprocessing(args) -> None:
    """A file converted without a tag or config gets the architecture's default preprocessing; say so
    when some tags of that architecture were trained with another."""
    import sys

    from vlm.convert.open_clip import tags_with_other_preprocessing

    ckpt = Path(args.checkpoint)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    if args.tag or args.arch.endswith(".json") or not ckpt.exists() or (folder / "open_clip_config.json").is_file():
        return
    other = tags_with_other_preprocessing(args.arch)
    if other:
        print(f"vlm convert: note: default {args.arch} preprocessing used; if the file is one of "
              f"{', '.join(other)}, pass --tag (they use other mean/std or resizing)", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
        raise UsageError(f"--out {out}: exists and is not an empty directory (pass --force to write into it)")
    if args.source == "open_clip":
        from vlm.convert.open_clip import arch_config
        from vlm.convert.remote import load_open_clip

        arch_config(args.arch)  # an unknown architecture fails before any file is read
        source = f"open_clip:{args.arch}@{args.checkpoint}" + (f" (tag {args.tag})" if args.tag else "")
        model, tokenizer, _ = load_open_clip(f"{args.arch}@{args.checkpoint}", tag=args.tag)
        _note_preprocessing(args)
    elif args.source == "timm":
        from vlm.convert.timm import load_timm

        source = f"timm:{args.directory}"
        model, tokenizer = load_timm(args.directory), None
    else:
        from vlm.convert.remote import load_hf

        source = f"hf:{args.directory}"
        model, tokenizer, _ = load_hf(args.directory)

    import torch

    if getattr(model.cfg, "model_type", "") == "classifier":
        from vlm.classify.checkpoint import load_classifier, save_classifier

        save_classifier(model, out, dtype=getattr(torch, args.dtype), extra={"converted_from": source})
        cfg = load_classifier(out).cfg  # the directory must load as a normal classifier checkpoint
        print(f"wrote {out}: classifier (ViT {cfg.vision.width}x{cfg.vision.layers}, patch {cfg.vision.patch_size}, "
              f"{cfg.vision.image_size}px; {cfg.num_classes} labels: {', '.join(cfg.labels[:3])}, ...), "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, preprocess "
              f"{cfg.preprocess.resize_mode}/{cfg.preprocess.interpolation} crop_pct {cfg.preprocess.crop_pct}")
        return 0

    from vlm.io.checkpoint import load_pretrained, save_pretrained

    save_pretrained(model, out, tokenizer=tokenizer, dtype=getattr(torch, args.dtype),
                    extra={"converted_from": source})
    reloaded, _ = load_pretrained(out)  # the directory must load as a normal checkpoint
    cfg = reloaded.cfg
    n = sum(p.numel() for p in reloaded.parameters())
    pp = cfg.preprocess
    print(f"wrote {out}: {cfg.model_type} (ViT {cfg.vision.width}x{cfg.vision.layers}, patch {cfg.vision.patch_size}, "
          f"{cfg.vision.image_size}px; text {cfg.text.width}x{cfg.text.layers}"
          f"{'; caption decoder' if cfg.decoder is not None else '; no caption decoder'}), {n / 1e6:.1f}M parameters, "
          f"preprocess {pp.resize_mode}/{pp.interpolation}")
    return 0
