"""``vlm data shapes``: write the procedural shapes dataset (see vlm.data.shapes).

Run: ``vlm data shapes --out data/shapes --n 20000 --seed 0 [--image-size 64]``
     ``vlm data shapes --layout classes --out data/shapes_cls --n 480 --seed 0 [--classes 4]``
     (class-per-folder single-object images, for ``vlm probe`` and classification training)
or   ``python -m vlm.data.shapes_cli --out data/shapes --n 200 --seed 0``

Into an existing directory it replaces an earlier shapes dataset (images of a larger earlier
run are removed), and refuses a directory that holds something else. A progress bar shows on
a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def build_parser():
    from vlm.cli.common import Parser

    parser = Parser(
        prog="vlm data shapes",
        description="Write procedural shape scenes with captions in the COCO captions format.",
    )
    parser.add_argument("--out", required=True, help="output folder (images/, annotations/, classes.json); "
                        "an earlier shapes dataset there is replaced")
    parser.add_argument("--n", type=int, required=True, help="number of images (ids 1..n)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (same seed: identical files)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--layout", choices=("coco", "classes"), default="coco",
                        help="coco: captions (default); classes: one folder per color+shape class")
    parser.add_argument("--classes", type=int, default=None, metavar="K",
                        help="--layout classes: keep the first K of the 24 classes")
    return parser


def foreign_content(out: Path):
    """Why ``out`` holds something other than a shapes dataset (so it must not be written into), or None."""
    captions = out / "annotations" / "captions.json"
    if captions.is_file():
        try:
            info = json.loads(captions.read_text(encoding="utf-8")).get("info", {})
        except (OSError, ValueError, AttributeError):
            info = {}
        if not str(info.get("description", "")).startswith("vlm procedural shapes"):
            return f"{captions} is not from vlm data shapes"
    elif (out / "images").is_dir() and any((out / "images").iterdir()):
        return f"{out / 'images'} holds files but there is no annotations/captions.json"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlm.data.shapes import generate_shapes

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"vlm data shapes: error: --out {out}: exists and is not a directory", file=sys.stderr)
        return 2
    why = foreign_content(out) if out.is_dir() else None
    if why:
        print(f"vlm data shapes: error: --out {out}: {why}; choose a new or empty directory", file=sys.stderr)
        return 2
    from vlm.cli.common import progress_bar

    bar = progress_bar("vlm data shapes", total=args.n, unit="img") if args.n > 0 else None
    start = time.perf_counter()
    if args.layout == "classes":
        from vlm.classify.shapes import generate_class_folders

        if bar is not None:  # the class-folder writer reports no progress
            bar.close()

        try:
            out = generate_class_folders(args.out, n=args.n, seed=args.seed, image_size=args.image_size,
                                         classes=args.classes)
        except (ValueError, OSError) as exc:
            print(f"vlm data shapes: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.n} images into class folders under {out} in {time.perf_counter() - start:.1f} s")
        return 0
    try:
        out = generate_shapes(out, n=args.n, seed=args.seed, image_size=args.image_size,
                              progress=(lambda _: bar.update(1)) if bar is not None else None)
    except (ValueError, OSError) as exc:
        print(f"vlm data shapes: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.n} images to {out / 'images'} in {seconds:.1f} s "
        f"({args.n / max(seconds, 1e-9):.0f} images/s)\n"
        f"captions: {out / 'annotations' / 'captions.json'}\n"
        f"zero-shot classes: {out / 'classes.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
