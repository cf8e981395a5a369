"""``vlm data shapes``: write the procedural shapes dataset (see vlm.data.shapes).

Run: ``vlm data shapes --out data/shapes --n 20000 --seed 0 [--image-size 64]``
     ``vlm data shapes --layout classes --out data/shapes_cls --n 480 --seed 0 [--classes 4]``
     (class-per-folder single-object images, for ``vlm probe`` and classification training)
or   ``python -m vlm.data.shapes_cli --out data/shapes --n 200 --seed 0``
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm data shapes",
        description="Write procedural shape scenes with captions in the COCO captions format.",
    )
    parser.add_argument("--out", required=True, help="output folder (images/, annotations/, classes.json)")
    parser.add_argument("--n", type=int, required=True, help="number of images (ids 1..n)")
    parser.add_argument("--seed", type=int, required=True, help="random seed (same seed: identical files)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--layout", choices=("coco", "classes"), default="coco",
                        help="coco: captions (default); classes: one folder per color+shape class")
    parser.add_argument("--classes", type=int, default=None, metavar="K",
                        help="--layout classes: keep the first K of the 24 classes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlm.data.shapes import generate_shapes

    start = time.perf_counter()
    if args.layout == "classes":
        from vlm.classify.shapes import generate_class_folders

        try:
            out = generate_class_folders(args.out, n=args.n, seed=args.seed, image_size=args.image_size,
                                         classes=args.classes)
        except (ValueError, OSError) as exc:
            print(f"vlm data shapes: error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.n} images into class folders under {out} in {time.perf_counter() - start:.1f} s")
        return 0
    try:
        out = generate_shapes(args.out, n=args.n, seed=args.seed, image_size=args.image_size)
    except (ValueError, OSError) as exc:
        print(f"vlm data shapes: error: {exc}", file=sys.stderr)
        return 2
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
