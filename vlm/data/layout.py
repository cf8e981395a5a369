"""Which caption dataset a directory holds: the three COCO-format layouts, opened by one function.

- ``annotations/captions.json`` + ``images/``: one set with no splits (``vlm data shapes`` writes it);
- ``dataset_coco.json`` (+ the folders its ``filepath`` entries name, e.g. ``val2014/``): a Karpathy
  root with the splits train, restval, val and test;
- ``annotations/captions_{split}2017.json`` + ``{split}2017/``: an official COCO root.

Training (``vlm.training.data``), evaluation (``vlm evaluate``) and indexing (``vlm index``) read a
dataset dir through ``open_caption_dir``, so a layout is recognised the same way everywhere::

    ds = open_caption_dir("data/coco", "test", load_images=False)  # a KarpathySplit
    refs = ds.references()  # {image_id: [captions]}

A split the layout does not have is a ``SplitError`` (a ValueError) naming what it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class SplitError(ValueError):
    """A split name the dataset directory does not have (or a needed split left out)."""


def is_single_layout(root) -> bool:
    """A dataset dir with one ``annotations/captions.json`` (no splits), as ``vlm data shapes`` writes."""
    return (Path(root) / "annotations" / "captions.json").is_file()


def open_caption_dir(root, split: Optional[str] = None, transform=None, tokenize=None, load_images: bool = True):
    """A caption dataset dir with its image-level view (``image_ids``, ``captions_for``, ``image_path``).

    - ``annotations/captions.json`` + ``images/``: one set, a ``CocoCaptions``; it has no
      splits, so ``split`` must be None;
    - ``dataset_coco.json``: a ``KarpathySplit`` of ``split`` (train, restval, val or test; needed);
    - a COCO root: ``annotations/captions_{split}2017.json`` + ``{split}2017/``.

    FileNotFoundError for a missing dir or one in none of these layouts; SplitError (a ValueError)
    for a split the layout does not have."""
    from vlm.data.coco import CocoCaptions

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    if is_single_layout(root):
        if split is not None:
            raise SplitError(f"{root} has one annotations/captions.json (no splits): leave the split out")
        return CocoCaptions(root / "images", root / "annotations" / "captions.json", transform, tokenize,
                            load_images)
    karpathy = root / "dataset_coco.json"
    if karpathy.is_file():
        return open_karpathy(karpathy, root, split, transform, tokenize, load_images)
    if split:
        official = root / "annotations" / f"captions_{split}2017.json"
        if official.is_file():
            return CocoCaptions(root / f"{split}2017", official, transform, tokenize, load_images)
    want = ["annotations/captions.json", "dataset_coco.json"] + \
        ([f"annotations/captions_{split}2017.json"] if split else [])
    raise FileNotFoundError(f"{root}: not a COCO-format dataset "
                            f"(expected {', '.join(want[:-1])} or {want[-1]})")


def open_karpathy(json_file, image_root, split: Optional[str], transform=None, tokenize=None,
                  load_images: bool = True, include_restval: bool = True):
    """One split of a Karpathy ``dataset_coco.json`` whose image folders are under ``image_root``
    (``split="train"`` includes restval unless ``include_restval=False``).

    FileNotFoundError for a missing file; SplitError for a split it does not have (or none)."""
    from vlm.data.coco import KARPATHY_SPLITS, KarpathySplit

    if split not in KARPATHY_SPLITS:
        raise SplitError(f"{json_file} has the Karpathy splits {', '.join(KARPATHY_SPLITS)}: "
                         + ("choose one" if split is None else f"not {split!r}"))
    return KarpathySplit(json_file, image_root, split, transform=transform, tokenize=tokenize,
                         include_restval=include_restval, load_images=load_images)


__all__ = ["SplitError", "is_single_layout", "open_caption_dir", "open_karpathy"]
