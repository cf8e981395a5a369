"""Items, skipped items and batching for image-caption datasets.

Every caption dataset in ``vlm.data`` (``CocoCaptions``, ``KarpathySplit``,
``load_caption_dataset``) returns an item dict built by ``make_item``::

    {"image": PIL image or transform(image), "caption": str,
     "text": tokenize([caption])[0]  (only when a tokenizer is given),
     "image_id": int, "path": str}

or ``None`` when the image is missing or cannot be decoded.  ``collate`` (the
``collate_fn`` for a ``torch.utils.data.DataLoader``) drops the ``None`` items,
stacks same-shaped tensors, keeps everything else as lists, and reports
``batch["num_skipped"]`` and ``batch["batch_size"]``.  A ``SkipCounter`` adds
the skips up over an epoch and prints a one-line summary::

    loader = DataLoader(dataset, batch_size=64, collate_fn=collate, num_workers=2)
    skips = SkipCounter()
    for batch in loader:
        skips.update(batch)
        if batch["batch_size"] == 0:
            continue
        ...
    print(skips.summary())

Datasets also keep their own ``dataset.skips`` (a ``SkipCounter`` with the
reasons); it is exact when items are loaded in this process (``num_workers=0``,
evaluation loops), while the per-batch count is exact with worker processes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from vlm.errors import first_line

logger = logging.getLogger("vlm.data")

Transform = Callable[[Any], Any]  # PIL.Image.Image -> torch.Tensor (or anything)
Tokenize = Callable[[list[str]], Any]  # list[str] -> torch.Tensor (B, L)


@dataclass
class SkipCounter:
    """Counts items skipped because their image could not be loaded."""

    seen: int = 0  # items asked for (loaded + skipped)
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)  # reason text -> count
    examples: list[str] = field(default_factory=list)  # first "source: reason" lines
    max_examples: int = 5
    on_skip: Optional[Callable[[str, str], None]] = None  # (source, reason) of every skip, instead of the log

    def record_ok(self) -> None:
        self.seen += 1

    def record_skip(self, source: str, reason: str) -> None:
        """Count one skipped item; ``on_skip`` reports it, else the first ``max_examples`` are logged."""
        self.seen += 1
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{source}: {reason}")
            if self.on_skip is None:
                logger.warning("skipping image %s: %s", source, reason)
        if self.on_skip is not None:
            self.on_skip(source, reason)

    def update(self, batch: dict) -> None:
        """Add the counts of a batch made by ``collate``."""
        self.skipped += int(batch.get("num_skipped", 0))
        self.seen += int(batch.get("num_skipped", 0)) + int(batch.get("batch_size", 0))

    def merge(self, other: "SkipCounter") -> None:
        self.seen += other.seen
        self.skipped += other.skipped
        self.reasons.update(other.reasons)
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(room, 0)])

    def summary(self) -> str:
        """One line, e.g. 'skipped 2 of 10 items (20.0%): 1x no such file, 1x corrupt'."""
        if self.skipped == 0:
            return f"skipped 0 of {self.seen} items"
        share = 100.0 * self.skipped / max(self.seen, 1)
        text = f"skipped {self.skipped} of {self.seen} items ({share:.1f}%)"
        if self.reasons:
            text += ": " + ", ".join(f"{n}x {r}" for r, n in self.reasons.most_common(3))
        return text


def load_or_skip(load: Callable[[], Any], source: str, skips: Optional[SkipCounter]) -> Any:
    """Run ``load()``; on an image error record a skip and return None.

    Catches ``vlm.io.images.ImageLoadError`` and OSError/ValueError (the errors a
    damaged or missing file raises); other exceptions are bugs and propagate.
    """
    from vlm.io.images import ImageLoadError

    try:
        value = load()
    except ImageLoadError as exc:
        reason = getattr(exc, "reason", str(exc))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = first_line(exc)
    else:
        if skips is not None:
            skips.record_ok()
        return value
    if skips is not None:
        skips.record_skip(source, reason)
    return None


def make_item(
    image: Any,
    caption: str,
    image_id: int,
    path: str,
    transform: Optional[Transform] = None,
    tokenize: Optional[Tokenize] = None,
) -> dict:
    """The item dict every caption dataset returns (see the module docstring)."""
    item = {
        "image": transform(image) if transform is not None else image,
        "caption": caption,
        "image_id": image_id,
        "path": path,
    }
    if tokenize is not None:
        item["text"] = tokenize([caption])[0]
    return item


def collate(items: Sequence[Optional[dict]]) -> dict:
    """Batch item dicts: drop Nones, stack same-shaped tensors, list the rest.

    Returns the keys of the items plus ``num_skipped`` (Nones dropped) and
    ``batch_size`` (items kept).  With every item skipped, only those two keys.
    """
    kept = [item for item in items if item is not None]
    batch: dict[str, Any] = {"num_skipped": len(items) - len(kept), "batch_size": len(kept)}
    if not kept:
        return batch
    for key in kept[0]:
        values = [item[key] for item in kept]
        batch[key] = _stack_if_tensors(values)
    return batch


def _stack_if_tensors(values: list) -> Any:
    first = values[0]
    if type(first).__module__.startswith("torch") and hasattr(first, "shape"):
        import torch

        if all(isinstance(v, torch.Tensor) and v.shape == first.shape for v in values):
            return torch.stack(values)
    return values


__all__ = ["SkipCounter", "collate", "load_or_skip", "make_item"]
