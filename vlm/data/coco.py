"""COCO captions: the official annotation files and the Karpathy splits.

``CocoCaptions(image_root, ann_file)`` reads a COCO captions file (e.g.
``captions_val2017.json``, or the shapes dataset of ``vlm.data.shapes``)
through pycocotools.  ``KarpathySplit(dataset_coco_json, image_root, split)``
reads Karpathy's ``dataset_coco.json`` (train / restval / val / test).

Both are map-style datasets with one item per (image, caption) pair, for
training (item dicts as documented in ``vlm.data.collate``; ``None`` for a
missing or unreadable image, counted in ``dataset.skips``), and expose the
image-level view evaluation needs: ``image_ids()``, ``captions_for(id)``,
``image_path(id)``, ``references()`` and ``images()`` (one item per image); the
interfaces are ``vlm.data.dataset.CaptionDataset`` and ``CaptionReferences``::

    ds = CocoCaptions("coco/val2017", "coco/annotations/captions_val2017.json",
                      transform=preprocess, tokenize=tokenizer)
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate)
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterator, Optional

from vlm.data.collate import SkipCounter, Tokenize, Transform, load_or_skip, make_item


class CaptionIndex:
    """Shared logic: image id -> (path, captions), flattened into (image, caption) pairs.

    Implements both interfaces of ``vlm.data.dataset``: ``CaptionDataset`` (training) and
    ``CaptionReferences`` (evaluation)."""

    is_stream = False  # map-style: len(ds) and ds[i]

    def __init__(
        self,
        paths: dict[int, Path],
        captions: dict[int, list[str]],
        transform: Optional[Transform] = None,
        tokenize: Optional[Tokenize] = None,
        load_images: bool = True,
    ) -> None:
        self._paths = paths
        self._captions = captions
        self._ids = sorted(i for i in paths if captions.get(i))
        self._pairs = [(i, c) for i in self._ids for c in captions[i]]
        self.transform = transform
        self.tokenize = tokenize
        self.load_images = load_images  # False: items carry the path, no decoding
        self.skips = SkipCounter()

    # ---- training view: one item per (image, caption) pair
    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> Optional[dict]:
        image_id, caption = self._pairs[index]
        return self._item(image_id, caption)

    def _item(self, image_id: int, caption: str) -> Optional[dict]:
        path = self._paths[image_id]
        if not self.load_images:
            return make_item(str(path), caption, image_id, str(path), None, self.tokenize)
        from vlm.io.images import load_image

        image = load_or_skip(lambda: load_image(path), str(path), self.skips)
        if image is None:
            return None
        return make_item(image, caption, image_id, str(path), self.transform, self.tokenize)

    # ---- evaluation view: one entry per image
    def image_ids(self) -> list[int]:
        """Ids of the images that have at least one caption, sorted."""
        return list(self._ids)

    def captions_for(self, image_id: int) -> list[str]:
        """Reference captions of one image (KeyError naming the id if unknown)."""
        if image_id not in self._captions:
            raise KeyError(f"image id {image_id}: not in this dataset")
        return list(self._captions[image_id])

    def image_path(self, image_id: int) -> Path:
        if image_id not in self._paths:
            raise KeyError(f"image id {image_id}: not in this dataset")
        return self._paths[image_id]

    def references(self) -> dict[int, list[str]]:
        """{image_id: captions} for every image: the input of caption_metrics."""
        return {i: list(self._captions[i]) for i in self._ids}

    def captions(self, limit: Optional[int] = None) -> list[str]:
        """Every caption in pair order (the first ``limit`` when given); no image is read."""
        return [c for _, c in self._pairs[:limit]]

    def images(self, limit: Optional[int] = None) -> "ImageItems":
        """A dataset with one item per image (caption = its first reference), the first ``limit``."""
        return ImageItems(self, limit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._ids)} images, {len(self._pairs)} captions)"


class ImageItems:
    """One item per image of a ``CaptionIndex`` (for captioning / retrieval eval)."""

    is_stream = False

    def __init__(self, index: CaptionIndex, limit: Optional[int] = None) -> None:
        self.index = index
        self._ids = index.image_ids()[:limit]

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> Optional[dict]:
        image_id = self._ids[i]
        return self.index._item(image_id, self.index._captions[image_id][0])

    def __iter__(self) -> Iterator[Optional[dict]]:
        return (self[i] for i in range(len(self)))

    @property
    def skips(self) -> SkipCounter:
        return self.index.skips


class CocoCaptions(CaptionIndex):
    """A COCO captions annotation file (``info``/``images``/``annotations``) via pycocotools.

    ``image_root`` holds the files named by each image's ``file_name``.
    Images without a caption are left out.  Items whose image is missing or
    corrupt come back as ``None`` and are counted in ``self.skips``.
    """

    def __init__(
        self,
        image_root: str | Path,
        ann_file: str | Path,
        transform: Optional[Transform] = None,
        tokenize: Optional[Tokenize] = None,
        load_images: bool = True,
    ) -> None:
        from pycocotools.coco import COCO

        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"{ann_file}: annotation file not found")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco = COCO(str(ann_file))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ValueError(f"{ann_file}: not a COCO captions file ({exc})") from None
        if "annotations" not in coco.dataset or "images" not in coco.dataset:
            raise ValueError(f"{ann_file}: not a COCO captions file (needs 'images' and 'annotations')")
        root = Path(image_root)
        paths = {int(i): root / info["file_name"] for i, info in coco.imgs.items()}
        captions: dict[int, list[str]] = {}
        for ann in sorted(coco.dataset["annotations"], key=lambda a: a["id"]):
            caption = str(ann.get("caption", "")).strip()
            if caption and int(ann["image_id"]) in paths:
                captions.setdefault(int(ann["image_id"]), []).append(caption)
        self.coco = coco
        super().__init__(paths, captions, transform, tokenize, load_images)


KARPATHY_SPLITS = ("train", "restval", "val", "test")


class KarpathySplit(CaptionIndex):
    """One split of Karpathy's ``dataset_coco.json`` (also Flickr8k/30k files).

    Images live at ``image_root/filepath/filename`` (``image_root/filename``
    when an entry has no ``filepath``); ids are ``cocoid`` (else ``imgid``).
    ``split="train"`` includes the "restval" images unless
    ``include_restval=False`` (the usual 113k-image Karpathy train set).
    """

    def __init__(
        self,
        dataset_coco_json: str | Path,
        image_root: str | Path,
        split: str,
        transform: Optional[Transform] = None,
        tokenize: Optional[Tokenize] = None,
        include_restval: bool = True,
        load_images: bool = True,
    ) -> None:
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"split {split!r}: must be one of {', '.join(KARPATHY_SPLITS)}")
        json_path = Path(dataset_coco_json)
        try:
            data = json.loads(json_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{json_path}: Karpathy split file not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{json_path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{json_path}: not a Karpathy split file (needs an 'images' list)")
        wanted = {split, "restval"} if split == "train" and include_restval else {split}
        root = Path(image_root)
        paths: dict[int, Path] = {}
        captions: dict[int, list[str]] = {}
        for entry in data["images"]:
            if entry.get("split") not in wanted:
                continue
            image_id = int(entry.get("cocoid", entry.get("imgid")))
            folder = root / entry["filepath"] if entry.get("filepath") else root
            paths[image_id] = folder / entry["filename"]
            captions[image_id] = [
                str(s.get("raw") or " ".join(s.get("tokens", []))).strip()
                for s in entry.get("sentences", [])
            ]
            captions[image_id] = [c for c in captions[image_id] if c]
        self.split = split
        super().__init__(paths, captions, transform, tokenize, load_images)


__all__ = ["CaptionIndex", "CocoCaptions", "ImageItems", "KarpathySplit", "KARPATHY_SPLITS"]
