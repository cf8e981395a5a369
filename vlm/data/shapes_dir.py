"""A shapes dataset on disk: ``generate_shapes`` writes one, ``is_shapes_dir`` recognises one, and
``prepare_out_dir`` replaces an earlier one (either layout) so that a rewrite holds exactly the new set.

- COCO layout (``generate_shapes``, scenes from ``vlm.data.shapes``): ``images/NNNNNN.png``,
  ``annotations/captions.json``, ``classes.json``.
- Class-folder layout (``vlm.classify.shapes.generate_class_folders``): ``CLASS/NNNNNN.png``,
  one folder per "color shape" class.

``prepare_out_dir(out)`` removes an earlier shapes dataset of either layout (both, if an older
vlm mixed them), so the directory then holds exactly the new one; a directory holding anything
else is refused (``InvalidOption`` naming ``out_dir``, ``--out`` on the command line), never
written into or cleaned.
"""

from __future__ import annotations

import re
import json
from pathlib import Path
from typing import Optional

import numpy as np

from vlm.data.shapes import (CLASSES, DESCRIPTION, TEMPLATES, _MARK, check_counts, png_bytes,
                             render_scene, sample_scene, scene_captions)
from vlm.errors import InvalidOption

SCENE_FILE = re.compile(r"\d{6}\.png")  # image ids 1..n, as both layouts name them
ANNOTATION_FILES = ("captions.json", "captions.tmp")  # .tmp: a write cut short (_write_json)
ROOT_FILES = ("classes.json", "classes.tmp")


def foreign_content(out: Path) -> Optional[str]:
    """Why ``out`` holds something ``vlm data shapes`` did not write, or None (missing, empty, or
    only an earlier shapes dataset)."""
    if not out.is_dir():
        return None
    for entry in sorted(out.iterdir()):
        name = entry.name
        if entry.is_symlink():
            return f"{entry} is a symbolic link, not from vlm data shapes"
        if name in ROOT_FILES and entry.is_file():
            continue
        if name == "annotations" and entry.is_dir():
            other = sorted(p for p in entry.iterdir() if p.name not in ANNOTATION_FILES)
            if other:
                return f"{other[0]} is not from vlm data shapes"
            if (entry / "captions.json").exists() and not is_shapes_dir(out):
                return f"{entry / 'captions.json'} is not from vlm data shapes"
            continue
        if (name == "images" or name in CLASSES) and entry.is_dir():
            other = sorted(p for p in entry.iterdir() if not (SCENE_FILE.fullmatch(p.name) and p.is_file()))
            if other and name == "images" and not (out / "annotations" / "captions.json").is_file():
                return f"{entry} holds files but there is no annotations/captions.json"
            if other:
                return f"{other[0]} is not from vlm data shapes"
            continue
        return f"{entry} is not from vlm data shapes"
    return None


def prepare_out_dir(out_dir) -> Path:
    """``out_dir``, created, with any earlier shapes dataset removed; ``InvalidOption`` when it is
    a file or holds anything else."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidOption("out_dir", str(out_dir), "exists and is not a directory", flag="--out")
    why = foreign_content(out)
    if why:
        raise InvalidOption("out_dir", str(out_dir), f"{why}; choose a new or empty directory", flag="--out")
    if out.is_dir():
        for entry in out.iterdir():  # only what an earlier run wrote (foreign_content checked every entry)
            if entry.is_dir():
                for f in entry.iterdir():
                    f.unlink()
                entry.rmdir()
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def generate_shapes(out_dir: str | Path, n: int, seed: int, image_size: int = 64, progress=None) -> Path:
    """Write ``n`` scenes (ids 1..n) under ``out_dir``; returns ``out_dir``.

    An earlier shapes dataset in ``out_dir`` (either layout) is replaced, so it holds exactly
    this one; a directory holding anything else is refused (``vlm.data.shapes_dir``).
    ``progress``, if given, is called with each image id. Raises ``InvalidOption`` (a ValueError)
    for n < 1, a negative seed, image_size < 32 or such an ``out_dir``.
    """
    check_counts(n, seed, image_size)
    out = prepare_out_dir(out_dir)
    (out / "images").mkdir()
    (out / "annotations").mkdir()

    images, annotations, labels = [], [], {}
    for image_id in range(1, n + 1):
        rng = np.random.default_rng([seed, image_id])
        scene = sample_scene(rng, image_size)
        image = render_scene(scene, rng, image_size)
        file_name = f"{image_id:06d}.png"
        (out / "images" / file_name).write_bytes(png_bytes(np.asarray(image)))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "background": scene.background,
                "objects": [o.to_json(image_size) for o in scene.objects],
            }
        )
        for caption in scene_captions(scene, rng, image_size):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "caption": caption}
            )
        if len(scene.objects) == 1:
            labels[str(image_id)] = CLASSES.index(scene.objects[0].class_name)
        if progress is not None:
            progress(image_id)

    coco = {
        "info": {
            "description": DESCRIPTION,
            "version": "1.0",
            "seed": seed,
            "image_size": image_size,
            "num_images": n,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    _write_json(out / "annotations" / "captions.json", coco)
    _write_json(out / "classes.json", {"classes": CLASSES, "templates": TEMPLATES, "labels": labels})
    return out


def shapes_objects(root: str | Path) -> Optional[dict[int, list[dict]]]:
    """Image id -> its objects (``shape``, ``color``, ...) for a dataset dir that ``generate_shapes``
    wrote (its ``annotations/captions.json`` says so in ``info.description``); None for any other
    dir, or one whose captions file cannot be read."""
    try:
        data = json.loads((Path(root) / "annotations" / "captions.json").read_text(encoding="utf-8"))
        if not str(data.get("info", {}).get("description", "")).startswith(_MARK):
            return None
        return {int(im["id"]): list(im.get("objects", [])) for im in data["images"]}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def is_shapes_dir(root: str | Path) -> bool:
    """A dataset dir written by ``generate_shapes`` (``vlm data shapes``)."""
    return shapes_objects(root) is not None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n")
    tmp.replace(path)
