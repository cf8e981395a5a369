"""The shapes data in the class-per-folder layout: single-object scenes of ``vlm.data.shapes``
(same colors, shapes, sizes, backgrounds and renderer), one folder per "color shape" class.

    out/red circle/000001.png, out/blue star/000002.png, ...

Image ``i`` depends only on ``(seed, i)``: scenes are drawn until one holds a single object of
an allowed class. Run: ``vlm data shapes --layout classes --out data/shapes_cls --n 480 --seed 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from vlm.data.shapes import CLASSES, png_bytes, render_scene, sample_scene


def generate_class_folders(out_dir, n: int, seed: int, image_size: int = 64,
                           classes: Optional[int] = None, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Write ``n`` single-object images into ``out_dir/CLASS/``; ``classes`` keeps the first k of
    the 24 color+shape classes (all by default). ``progress``, if given, is called with each
    image id once it is written."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size={image_size!r}: must be an integer >= 32")
    k = len(CLASSES) if classes is None else classes
    if not 2 <= k <= len(CLASSES):
        raise ValueError(f"classes={classes!r}: must be between 2 and {len(CLASSES)}")
    allowed = set(CLASSES[:k])
    out = Path(out_dir)
    for name in CLASSES[:k]:
        (out / name).mkdir(parents=True, exist_ok=True)
    for image_id in range(1, n + 1):
        rng = np.random.default_rng([seed, image_id])
        while True:
            scene = sample_scene(rng, image_size)
            if len(scene.objects) == 1 and scene.objects[0].class_name in allowed:
                break
        image = render_scene(scene, rng, image_size)
        (out / scene.objects[0].class_name / f"{image_id:06d}.png").write_bytes(png_bytes(np.asarray(image)))
        if progress is not None:
            progress(image_id)
    return out
