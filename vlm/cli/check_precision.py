"""``vlm check-precision IMAGE_OR_DIR... --precision bf16``: how close a reduced precision stays to fp32.

Loads the model twice, in float32 and at ``--precision``, and compares them on the images
(``vlm.runtime.agreement``): next-token top-1 agreement teacher-forced on the float32 captions,
the share of identical captions, and the cosine of image and text embeddings to float32.
Unreadable images are named and skipped (exit 1). docs/precision.md explains the figures.
"""

from __future__ import annotations

from typing import Optional

from vlm.cli.common import Parser, Reporter, add_model_args, iter_batches, load_pipeline


def build_parser() -> Parser:
    p = Parser(prog="vlm check-precision",
               description="Compare a model at a reduced precision with the same model in fp32, on your images.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_args(p, precision="bf16")
    return p


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_report(r: dict, name: str, precision: str) -> str:
    lines = [f"{name} at {precision} against fp32, {r['images']} images:"]
    if r["captions"]:
        lines += [
            f"  next-token top-1 agreement (teacher-forced on the fp32 captions): "
            f"{_fmt(r['next_token_agreement'])} over {r['tokens']} tokens",
            f"  identical captions: {_fmt(r['identical_captions'], 3)} ({r['captions']} captions)",
        ]
    lines.append(f"  image embedding cosine: mean {_fmt(r['image_cosine']['mean'], 5)}, "
                 f"min {_fmt(r['image_cosine']['min'], 5)}")
    if r["text_cosine"]:
        lines.append(f"  text embedding cosine (fp32 captions): mean {_fmt(r['text_cosine']['mean'], 5)}, "
                     f"min {_fmt(r['text_cosine']['min'], 5)}")
    if r["reference_top1_probability"] is not None:
        p = r["reference_top1_probability"]
        lines.append(f"  fp32 median top-1 probability: {p:.3f}"
                     + (" (flat distributions: any rounding flips the argmax; agreement judges little)"
                        if p < 0.5 else ""))
    for ex in r["differing_captions"]:
        lines.append(f"  differs: {ex['fp32']!r} -> {ex['reduced']!r}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import json

    from vlm.runtime.agreement import Agreement

    args = build_parser().parse_args(argv)
    if args.precision == "fp32":
        from vlm.errors import InvalidOption

        raise InvalidOption("precision", "fp32", "compare a reduced precision (bf16 or int8) with fp32")
    low = load_pipeline(args)  # an impossible precision is refused before the second load
    ref = load_pipeline(argparse.Namespace(**{**vars(args), "precision": "fp32"}))
    out = Reporter(args.json, "check-precision", json_errors=False)
    tally = Agreement()
    for batch in iter_batches(args.inputs, args.batch_size):
        for it in batch:
            if it.error is not None:
                out.error(it)
        good = [it.image for it in batch if it.error is None]
        if good:
            tally.add(ref, low, good)
    if not tally.image_cos:  # each unreadable input is already named on its own line
        import sys

        print("vlm check-precision: error: no image could be read: nothing to compare", file=sys.stderr)
        return 1
    r = tally.report()
    out.result({"model": low.name, "precision": args.precision, **r}, format_report(r, low.name, args.precision))
    return out.exit_code
