"""``vlm explain IMAGE --out DIR``: PNG figures of what the ViT learned, for one image.

Writes the patch-embedding filters, the position-embedding similarity, the mean
attention distance per head, the attention rollout over the image and, for a
CoCa model, the caption decoder's cross-attention per token of ``--text`` (or of
the model's own caption). See ``vlm/explain/`` and ``docs/explain.md``.

    vlm explain cat.jpg --out explain/ [--model M] [--text "a cat on a mat"] [--image-size 448] [--json]
"""

from __future__ import annotations

import json
from typing import Optional

from vlm.cli.common import Parser, add_model_args, load_pipeline
from vlm.errors import UsageError


def build_parser() -> Parser:
    from vlm.cli.options import add_dataclass_flags
    from vlm.generation.config import GenerationConfig

    p = Parser(prog="vlm explain", description="Figures of what the ViT learned, for one image.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="DIR", help="directory the PNG figures are written to")
    p.add_argument("--text", default=None,
                   help="caption whose tokens get a cross-attention map (default for CoCa: the model's own caption)")
    p.add_argument("--filters", choices=("pca", "raw"), default="pca",
                   help="patch-embedding filters as principal components (default) or raw")
    p.add_argument("--num-filters", type=int, default=28, metavar="N", help="filter tiles to show")
    p.add_argument("--decoder-layers", choices=("mean", "last"), default="mean",
                   help="cross-attention averaged over all decoder layers (default) or the last one")
    add_model_args(p, batch_size=False)  # one image: nothing to batch
    add_dataclass_flags(p, GenerationConfig, only=("max_tokens",),
                        title="without --text: how the model captions the image for the token figure")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.cli.options import dataclass_from_flags
    from vlm.generation.config import GenerationConfig
    from vlm.io.images import ImageLoadError, load_image

    args = build_parser().parse_args(argv)
    if args.num_filters < 1:
        raise UsageError(f"--num-filters {args.num_filters}: must be at least 1")
    generation = dataclass_from_flags(GenerationConfig, args).validate()
    if args.text is not None and not args.text.strip():
        raise UsageError("--text is empty: give the caption whose words to explain")
    try:
        image = load_image(args.image)  # a bad image fails before the model loads
    except ImageLoadError as e:
        raise UsageError(str(e)) from None
    pipe = load_pipeline(args)

    from vlm.explain.report import explain_image

    result = explain_image(pipe, image, args.out, text=args.text, filters=args.filters,
                           num_filters=args.num_filters, layers=args.decoder_layers, generation=generation)
    if args.json:
        obj = {"image": args.image, "files": result.files}
        if result.caption is not None:
            obj["caption"] = result.caption
            obj["caption_generated"] = result.caption_generated
        print(json.dumps(obj))
    else:
        for name, path in result.files.items():
            print(f"{name}: {path}")
        if result.caption is not None:
            print(f"caption ({'generated' if result.caption_generated else 'given'}): {result.caption}")
    return 0
