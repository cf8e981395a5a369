"""``vlm similarity --images IMG... --texts TEXT...``: the image-text cosine-similarity matrix.

Rows are images, columns texts. ``--plot FILE.png`` draws it as a labelled
heatmap with the image thumbnails along the left and the texts along the top.
An image that fails to load is reported and left out of the matrix.
"""

from __future__ import annotations

import json
from typing import Optional

from vlm.cli.common import Parser, add_model_args, iter_batches, load_pipeline
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm similarity", description="Cosine similarity between images and texts.")
    p.add_argument("--images", nargs="+", required=True, metavar="IMG")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", metavar="FILE.png", help="write a heatmap with thumbnails and texts")
    add_model_args(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    texts = [t for t in args.texts if t.strip()]
    if not texts:
        raise UsageError("--texts: empty text list")
    pipe = load_pipeline(args)
    text_embeds = pipe.encode_texts(texts)
    sources, images, failed = [], [], 0
    rows = []
    for batch in iter_batches(args.images, args.batch_size):
        good = [it for it in batch if it.error is None]
        for it in batch:
            if it.error is not None:
                failed += 1
                print(f"vlm similarity: error: {it.error}", file=sys.stderr)
        if good:
            rows.append(pipe.encode_images([it.image for it in good]) @ text_embeds.t())
            sources += [it.source for it in good]
            images += [it.image for it in good] if args.plot else []
    cosine = [r for block in rows for r in block.tolist()]
    if args.json:
        print(json.dumps({"images": sources, "texts": texts, "cosine": cosine}))
    else:
        print_table(sources, texts, cosine)
    if args.plot and sources:
        from vlm.plotting import similarity_heatmap

        similarity_heatmap(images, texts, cosine, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 1 if failed else 0


def print_table(sources: list[str], texts: list[str], cosine: list[list[float]]) -> None:
    width = max([len(s) for s in sources] + [5])
    print(" " * width + "  " + "  ".join(f"[{j}]" .rjust(7) for j in range(len(texts))))
    for s, row in zip(sources, cosine):
        print(s.ljust(width) + "  " + "  ".join(f"{v:7.3f}" for v in row))
    for j, t in enumerate(texts):
        print(f"[{j}] {t}")
