"""What ``vlm data shapes`` wrote into a directory, in either layout, so that a rewrite replaces it.

- COCO layout (``vlm.data.shapes.generate_shapes``): ``images/NNNNNN.png``,
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
from pathlib import Path
from typing import Optional

from vlm.data.shapes import CLASSES, is_shapes_dir
from vlm.errors import InvalidOption

SCENE_FILE = re.compile(r"\d{6}\.png")  # image ids 1..n, as both layouts name them
ANNOTATION_FILES = ("captions.json", "captions.tmp")  # .tmp: a write cut short (shapes._write_json)
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
