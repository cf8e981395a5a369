"""``vlm export``: write a model as ONNX graphs, a transformers CLIPModel or an open_clip checkpoint.

    vlm export onnx [MODEL] --out DIR        # MODEL: shipped name, checkpoint dir, open_clip:ARCH, hf:NAME
    vlm export hf ckpt/clip_b32 --out DIR
    vlm export open_clip ckpt/coca_b32 --out DIR
    vlm export --list [MODEL] [--json]

A model the format cannot express is refused in one line (exit status 2) and nothing is
written; the output directory appears whole (written beside it, then renamed).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError

FORMATS = ("onnx", "hf", "open_clip")


def build_parser() -> Parser:
    p = Parser(prog="vlm export", description="Export a model to ONNX, Hugging Face transformers or open_clip.")
    p.add_argument("format", nargs="?", metavar="{onnx,hf,open_clip}", help="the target format")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="shipped model name, checkpoint directory, open_clip:ARCH@FILE or hf:NAME (default: the "
                        "shipped default model)")
    p.add_argument("--out", metavar="DIR", help="the directory to write (must be new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--list", action="store_true", help="which formats each model type (or MODEL) supports")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return _list(args)
    if args.format not in FORMATS:
        raise UsageError(f"{args.format or 'no format'}: give a format (onnx, hf or open_clip) or --list")
    if not args.out:
        raise UsageError("--out DIR is required")
    from pathlib import Path

    from vlm.export.common import check_out_dir

    check_out_dir(Path(args.out), args.force)  # before the model loads (export checks it again, atomically)
    import vlm.api
    from vlm.export import check, export

    pipe = vlm.api.load(args.model, device="cpu")
    check(pipe.model, getattr(pipe, "tokenizer", None), args.format, pipe.name)  # refuse before any export work
    result = export(pipe, args.format, args.out, force=args.force)
    for note in result.notes:
        print(f"vlm export: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"format": result.format, "out": str(result.out), "files": result.files,
                          "notes": result.notes}))
        return 0
    extra = ""
    if args.format == "onnx":
        worst = max(result.details["parity_max_abs_diff"].values())
        extra = f"; onnxruntime {result.details['onnxruntime_version']} vs PyTorch: max |diff| {worst:.1e}"
    elif args.format == "open_clip" and result.details.get("arch"):
        extra = f"; open_clip architecture {result.details['arch']}"
    print(f"wrote {result.out}: {args.format} ({', '.join(result.files)}){extra}")
    return 0


def _list(args) -> int:
    from vlm.export import support_table

    if args.model is not None and args.format not in FORMATS:
        raise UsageError(f"{args.format}: not a format (onnx, hf or open_clip); use --list [MODEL]")
    name = args.model or (args.format if args.format not in FORMATS else None)
    if name:
        import vlm.api

        pipe = vlm.api.load(name, device="cpu")
        table = support_table(pipe.model, getattr(pipe, "tokenizer", None), pipe.name)
    else:
        table = support_table()
    if args.json:
        print(json.dumps(table))
        return 0
    for kind, formats in table.items():
        print(f"{kind}:" if not name else f"{name} ({kind}):")
        for fmt, what in formats.items():
            print(f"  {fmt:<10} {what}")
    return 0
