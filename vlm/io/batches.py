"""Reading images for a pipeline, ``batch_size`` at a time, with the ``on_error`` rule.

Shared by ``vlm.api.Pipeline`` and ``vlm.classify.pipeline.ClassifierPipeline``: a bad image either
raises its ``ImageLoadError`` (``on_error="raise"``) or stands in its place in the results
(``on_error="return"``), and the other images are still read.
"""

from __future__ import annotations

from vlm.errors import ImageLoadError, InvalidOption
from vlm.runtime.limits import DEFAULT_BATCH_SIZE

ON_ERROR = ("raise", "return")  # what a Pipeline method does with an image that cannot be read


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise InvalidOption("on_error", on_error, f"must be one of {', '.join(ON_ERROR)}")


class ImageBatches:
    """Reading images for a pipeline, ``batch_size`` at a time, with the ``on_error`` rule
    (shared by ``Pipeline`` and ``vlm.classify.pipeline.ClassifierPipeline``)."""

    batch_size: int = DEFAULT_BATCH_SIZE

    def load_images(self, images, on_error: str = "raise") -> list:
        """Decoded RGB PIL images (``vlm.io.images.load_image``); with ``on_error="return"`` a failed
        image gives its ``ImageLoadError`` in place."""
        from vlm.io.images import as_image_list, load_image

        check_on_error(on_error)
        out = []
        for im in as_image_list(images):
            try:
                out.append(load_image(im))
            except ImageLoadError as e:
                if on_error == "raise":
                    raise
                out.append(e)
        return out

    def _batches(self, images, on_error: str):
        """(loaded PIL images, their positions, all results so far) per batch, errors filled in."""
        from vlm.io.images import as_image_list

        check_on_error(on_error)
        items = as_image_list(images)
        results: list = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            loaded = self.load_images(items[start:start + self.batch_size], on_error)
            good = [n for n, im in enumerate(loaded, start) if not isinstance(im, ImageLoadError)]
            for n, im in enumerate(loaded, start):
                if isinstance(im, ImageLoadError):
                    results[n] = im
            yield [loaded[n - start] for n in good], good, results
