"""``vlm search INDEX --text "a dog on a beach" | --image QUERY.jpg [--top-k 10] [--json]``.

Prints rank, score and path of the top k images per query; with ``--json`` one line per query,
``{"query": TEXT_OR_PATH, "results": [{"rank": 1, "path": P, "score": S}, ...]}``. The model is the
one that built the index (``--model`` must have the same weights). See vlm.index.search.
"""

from __future__ import annotations

import json
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm search", description="Search an index built by vlm index with text or an image.")
    p.add_argument("index", metavar="INDEX", help="index directory")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="QUERY.jpg", help="an image query (repeatable)")
    p.add_argument("--top-k", type=int, default=10, metavar="K", help="results per query (default 10)")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR",
                   help="model to encode queries (default: the one in index.json; must have the same weights)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    if bool(args.text) == bool(args.image):
        raise UsageError("give --text or --image queries (one kind)")
    for t in args.text:
        if not t.strip():
            raise UsageError(f"--text {t!r}: empty query")
    from vlm.index.search import open_index

    index = open_index(args.index, model=args.model, device=args.device)
    failed = 0
    if args.text:
        queries, hits = list(args.text), index.search(text=list(args.text), k=args.top_k)
    else:
        from vlm.io.images import ImageLoadError, load_image

        queries, images = [], []
        for q in args.image:
            try:
                images.append(load_image(q))
                queries.append(q)
            except ImageLoadError as e:
                failed += 1
                print(f"vlm search: error: {e}", file=sys.stderr)
        hits = index.search(image=images, k=args.top_k) if images else []
    for q, hs in zip(queries, hits):
        if args.json:
            print(json.dumps({"query": q, "results": [h.to_dict() for h in hs]}), flush=True)
        else:
            print(f"{q}:")
            for h in hs:
                print(f"  {h.rank:>3}  {h.score:7.4f}  {h.path}")
    return 1 if failed else 0
