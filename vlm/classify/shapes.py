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

from vlm.data.shapes import CLASSES, check_counts, png_bytes, render_scene, sample_scene
from vlm.data.shapes_dir import prepare_out_dir
from vlm.errors import InvalidOption


def generate_class_folders(out_dir, n: int, seed: int, image_size: int = 64,
                           classes: Optional[int] = None, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Write ``n`` single-object images into ``out_dir/CLASS/``; ``classes`` keeps the first k of
    the 24 color+shape classes (all by default). ``progress``, if given, is called with each
    image id once it is written. An earlier shapes dataset in ``out_dir`` (either layout) is
    replaced; a directory holding anything else is refused (``vlm.data.shapes_dir``)."""
    check_counts(n, seed, image_size)
    k = len(CLASSES) if classes is None else classes
    if not isinstance(k, int) or not 2 <= k <= len(CLASSES):
        raise InvalidOption("classes", classes, f"must be between 2 and {len(CLASSES)}")
    allowed = set(CLASSES[:k])
    out = prepare_out_dir(out_dir)
    for name in CLASSES[:k]:
        (out / name).mkdir()
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
