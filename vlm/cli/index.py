"""``vlm index SRC... --out INDEX``: embed images into a searchable index (see vlm.index).

    vlm index photos/ --out photos.index                 # again later: only new or changed files
    vlm index data/shapes --out shapes.index --captions  # dataset captions kept; others generated
    accelerate launch -m vlm.cli.main index photos/ --out photos.index   # one share per process

SRC: image files, folders (recursively), a COCO-format dataset dir or captions file, a Karpathy
root, a Hugging Face image folder, parquet or webdataset source. Unreadable images are named,
counted and skipped (exit 1); no image at all is a usage error (exit 2).
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from vlm.cli.common import Parser, add_precision_arg
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm index", description="Embed images into an index directory for vlm search / serve.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="image files, folders or datasets")
    p.add_argument("--out", required=True, metavar="INDEX", help="index directory (created or updated)")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="model (default: the shipped model)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader processes decoding images (default: CPUs - 1, at most 4; 0: none)")
    p.add_argument("--captions", action="store_true",
                   help="store a generated caption for images whose source has none (CoCa models)")
    p.add_argument("--index-type", default="auto", choices=("auto", "flat", "ivf", "ivfpq", "hnsw"),
                   help="faiss index (auto: exact up to 100k vectors, else IVF within --memory-budget)")
    p.add_argument("--memory-budget", type=float, default=8.0, metavar="GIB",
                   help="RAM the faiss index may take, in GiB (default 8)")
    add_precision_arg(p)
    p.add_argument("--shard-size", type=int, default=4096, metavar="N", help="embeddings per shard file")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_budget <= 0:
        raise UsageError(f"--memory-budget {args.memory_budget}: must be positive")
    from vlm.index.builder import _Dist, build

    report = build(args.sources, args.out, args.model, batch_size=args.batch_size, device=args.device,
                   workers=args.workers, captions=args.captions, index_type=args.index_type,
                   memory_budget=int(args.memory_budget * (1 << 30)), shard_size=args.shard_size,
                   precision=args.precision,
                   progress=sys.stderr.isatty())
    if not _Dist().is_main:
        return 0
    for line in report.source_errors + report.skipped:
        print(f"vlm index: error: {line}", file=sys.stderr)
    info = report.index
    if args.json:
        print(json.dumps({"index": str(args.out), "count": report.count, "embedded": report.embedded,
                          "reused": report.reused, "skipped": len(report.skipped),
                          "images_per_second": round(report.images_per_second, 2), "faiss": info,
                          **({"ood": report.far} if report.far is not None else {})}))
    else:
        far = f"; {report.far} look far from the model's training data" if report.far is not None else ""
        print(f"{args.out}: {report.count} images ({report.embedded} embedded, {report.reused} unchanged, "
              f"{len(report.skipped)} skipped); {info['type']} index, recall@10 {info['recall_at_10']:.3f}; "
              f"{report.images_per_second:.1f} images/s{far}")
    return 1 if report.skipped or report.source_errors else 0
