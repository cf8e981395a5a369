"""``vlm similarity --images IMG... --texts TEXT...``: the image-text cosine-similarity matrix.

Rows are images, columns texts. ``--plot FILE.png`` draws it as a labelled
heatmap with the image thumbnails along the left and the texts along the top.
An image that fails to load is reported and left out of the matrix.
"""

from __future__ import annotations

import json
from typing import Optional

from vlm.cli.common import Parser, Reporter, add_model_args, iter_batches, load_pipeline
from vlm.errors import UsageError


def build_parser() -> Parser:
    from vlm.cli.similarity_plot import PLOT_FORMATS

    p = Parser(prog="vlm similarity", description="Cosine similarity between images and texts.")
    p.add_argument("--images", nargs="+", required=True, metavar="IMG")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", metavar="FILE.png",
                   help=f"write a heatmap with thumbnails and texts ({', '.join(PLOT_FORMATS)} by the extension; "
                        f"PNG without one); checked writable before any work")
    add_model_args(p, precision="fp32")
    return p


def check_plot_path(path: str) -> None:
    """Refuse a --plot target that cannot be written, before the model loads."""
    import os

    from vlm.cli.similarity_plot import PLOT_FORMATS, plot_format

    if os.path.isdir(path):
        raise UsageError(f"--plot {path}: is a directory; give a file name, e.g. {os.path.join(path, 'similarity.png')}")
    if plot_format(path) not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: unknown figure format {plot_format(path)!r} (use {', '.join(PLOT_FORMATS)})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        existing = parent
        while not os.path.exists(existing):  # the nearest ancestor there is: a file in the way?
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"--plot {path}: {existing} is not a directory")
        raise UsageError(f"--plot {path}: no such directory {parent}")
    existed = os.path.exists(path)
    try:  # really open it (permissions, read-only file systems, root squash): only then is it known
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"--plot {path}: cannot write ({e.strerror or type(e).__name__})") from None
    if not existed:
        os.unlink(path)


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    texts = [t for t in args.texts if t.strip()]
    if not texts:
        raise UsageError("--texts: empty text list")
    if args.plot:
        check_plot_path(args.plot)
    pipe = load_pipeline(args)
    text_embeds = pipe.encode_texts(texts)
    out = Reporter(args.json, "similarity", json_errors=False)  # the JSON output is one object
    sources, images, rows = [], [], []
    with pipe.ood_run():  # one out-of-distribution notice for the whole run, counting every image
        for batch in iter_batches(args.images, args.batch_size):
            good = [it for it in batch if it.error is None]
            for it in batch:
                if it.error is not None:
                    out.error(it)
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
        from vlm.cli.similarity_plot import similarity_heatmap

        try:
            similarity_heatmap(images, texts, cosine, args.plot)
        except OSError as e:  # the disk filled or the directory vanished since the check
            raise UsageError(f"--plot {args.plot}: cannot write ({e.strerror or type(e).__name__})") from None
        print(f"wrote {args.plot}", file=sys.stderr)
    return out.exit_code


def print_table(sources: list[str], texts: list[str], cosine: list[list[float]]) -> None:
    width = max([len(s) for s in sources] + [5])
    print(" " * width + "  " + "  ".join(f"[{j}]" .rjust(7) for j in range(len(texts))))
    for s, row in zip(sources, cosine):
        print(s.ljust(width) + "  " + "  ".join(f"{v:7.3f}" for v in row))
    for j, t in enumerate(texts):
        print(f"[{j}] {t}")
