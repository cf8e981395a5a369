"""The interface every caption dataset kind implements, so callers need no ``hasattr`` branches.

``CaptionDataset`` is what training reads, whatever the source: ``CocoCaptions`` and
``KarpathySplit`` (``vlm.data.coco``), ``HFCaptionDataset`` and ``StreamingCaptionDataset``
(``vlm.data.hf``). Items are the dicts of ``vlm.data.collate`` (``None`` for a skipped one),
one per (image, caption) pair: by index (``len`` and ``ds[i]``) for map-style data, by
iteration for a stream (``is_stream``).

``CaptionReferences`` is the image-level view evaluation reads (COCO-format dirs, as
``vlm.data.layout.open_caption_dir`` opens them): image ids, their reference captions and
image files.

    ds = open_caption_dir("data/shapes")            # a CocoCaptions: both interfaces
    isinstance(ds, CaptionDataset)                  # True (runtime_checkable: members present)
    tokenizer_text = ds.captions()                  # every caption, no image decoded
    val = ds.images(limit=256)                      # one item per image, at most 256
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

from vlm.data.collate import SkipCounter


@runtime_checkable
class CaptionDataset(Protocol):
    """Image-caption pairs for training, with the views the rest of vlm needs."""

    @property
    def skips(self) -> SkipCounter:
        """Items skipped so far (missing or undecodable image, empty caption)."""
        ...

    @property
    def is_stream(self) -> bool:
        """True: an iterable stream (a torch ``IterableDataset``; no ``len``, shuffled by a buffer
        with ``shuffle(seed, buffer_size)``); False: map-style, ``len(ds)`` and ``ds[i]``."""
        ...

    def captions(self, limit: Optional[int] = None) -> list[str]:
        """Every non-empty caption (of the first ``limit`` items when given), no image decoded."""
        ...

    def images(self, limit: Optional[int] = None) -> Any:
        """One item per image (the first ``limit`` when given), for validation and sample
        captions; a stream or an HF table gives its first rows (one row is one image)."""
        ...


@runtime_checkable
class CaptionReferences(Protocol):
    """The image-level view of a COCO-format set: what captioning and retrieval metrics need."""

    def image_ids(self) -> list[int]:
        """Ids of the images that have at least one caption, sorted."""
        ...

    def captions_for(self, image_id: int) -> list[str]:
        """Reference captions of one image (KeyError naming the id if unknown)."""
        ...

    def image_path(self, image_id: int) -> Path:
        ...

    def references(self) -> dict[int, list[str]]:
        """{image_id: captions} for every image."""
        ...


__all__ = ["CaptionDataset", "CaptionReferences"]
