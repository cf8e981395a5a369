"""``vlm data SUBCOMMAND``: dataset tools. ``vlm data shapes`` writes the procedural shapes dataset.

    vlm data shapes --out data/shapes --n 20000 --seed 0 [--image-size 64]
    vlm data shapes --layout classes --out data/shapes_cls --n 480 --seed 0 [--classes 4]

``--layout classes`` writes class-per-folder single-object images (for ``vlm probe`` and
classification training). Into an existing directory it replaces an earlier shapes dataset of
either layout, and refuses a directory that holds anything else (``vlm.data.shapes_dir``).
A progress bar shows on a terminal. The data itself: ``vlm.data.shapes``.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm data", description="Dataset tools.")
    sub = p.add_subparsers(dest="what", metavar="{shapes}", parser_class=Parser)
    sub.required = True
    shapes = sub.add_parser("shapes", help="write the procedural shapes dataset (COCO captions format)",
                            description="Write procedural shape scenes with captions in the COCO captions format.")
    shapes.add_argument("--out", required=True, help="output folder (images/, annotations/, classes.json); "
                        "an earlier shapes dataset there is replaced")
    shapes.add_argument("--n", type=int, required=True, help="number of images (ids 1..n)")
    shapes.add_argument("--seed", type=int, required=True, help="random seed (same seed: identical files)")
    shapes.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    shapes.add_argument("--layout", choices=("coco", "classes"), default="coco",
                        help="coco: captions (default); classes: one folder per color+shape class")
    shapes.add_argument("--classes", type=int, default=None, metavar="K",
                        help="--layout classes: keep the first K of the 24 classes")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.cli.main import guarded

    args = build_parser().parse_args(argv)
    return guarded(f"vlm data {args.what}", lambda: shapes(args))


def shapes(args) -> int:
    from vlm.runtime.progress import progress_bar
    from vlm.errors import VlmError, first_line

    if args.layout == "classes":
        from vlm.classify.shapes import generate_class_folders

        write = functools.partial(generate_class_folders, classes=args.classes)
    else:
        from vlm.data.shapes_dir import generate_shapes as write
    start = time.perf_counter()
    bar = progress_bar("vlm data shapes", total=args.n, unit="img") if args.n > 0 else None
    try:
        out = write(Path(args.out), n=args.n, seed=args.seed, image_size=args.image_size,
                    progress=(lambda _: bar.update(1)) if bar is not None else None)
    except VlmError:  # InvalidOption: its flag (--n, --seed, --image-size, --classes, --out) and why
        raise
    except (ValueError, OSError) as exc:
        raise UsageError(first_line(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if args.layout == "classes":
        print(f"wrote {args.n} images into class folders under {out} in {seconds:.1f} s")
        return 0
    print(f"wrote {args.n} images to {out / 'images'} in {seconds:.1f} s "
          f"({args.n / max(seconds, 1e-9):.0f} images/s)\n"
          f"captions: {out / 'annotations' / 'captions.json'}\n"
          f"zero-shot classes: {out / 'classes.json'}")
    return 0
