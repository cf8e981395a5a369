"""Does a caption name the right color and shape? A check for single-object shapes images.

For the procedural shapes data (``vlm.data.shapes``) each image entry of
``captions.json`` lists its ``objects``. On images holding exactly one object,
a caption counts as correct when the color words it uses are exactly that
object's color and the shape words exactly its shape (plural forms included),
e.g. "a small red star in the top left of the image" for a red star. This is
an attribute-level check in the spirit of SPICE (Anderson et al. 2016), exact
here because the scene graph is known.

    shapes_attribute_accuracy({1: "a red star"}, {1: [{"color": "red", "shape": "star"}]})  # -> (1.0, 1)

``vlm evaluate`` adds it to the general metrics when the data dir is a shapes set (a
``CaptionCheck`` of ``vlm.evaluation.evaluate``)::

    report = evaluate_model(pipe, "data/shapes_test", checks=shapes_checks("data/shapes_test"))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Hashable, Mapping, Sequence

from vlm.data.shapes import COLORS, SHAPES
from vlm.data.shapes_dir import shapes_objects

_WORD = re.compile(r"[a-z]+")


def named_attributes(caption: str) -> tuple[set[str], set[str]]:
    """(color words, shape words) in a caption; plural shapes count as the shape."""
    words = _WORD.findall(caption.lower())
    colors = {w for w in words if w in COLORS}
    shapes = {w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words}
    return colors, {w for w in shapes if w in SHAPES}


def caption_names_object(caption: str, obj: Mapping) -> bool:
    colors, shapes = named_attributes(caption)
    return colors == {obj["color"]} and shapes == {obj["shape"]}


def shapes_attribute_accuracy(captions: Mapping[Hashable, str],
                              objects: Mapping[Hashable, Sequence[Mapping]]) -> tuple[float, int]:
    """(share of single-object images whose caption names the correct color and shape,
    number of such images). ``objects`` maps an image id to its list of objects."""
    single = [i for i in captions if len(objects.get(i, ())) == 1]
    if not single:
        return float("nan"), 0
    right = sum(caption_names_object(captions[i], objects[i][0]) for i in single)
    return right / len(single), len(single)


class ShapesAttributeCheck:
    """The attribute check as a ``CaptionCheck``: report entries ``shapes_attribute_accuracy`` and
    ``shapes_single_object_images`` (none when no evaluated image holds one object)."""

    def __init__(self, objects: Mapping[Hashable, Sequence[Mapping]]) -> None:
        self.objects = objects

    def __call__(self, captions: Mapping[Hashable, str]) -> dict:
        acc, n = shapes_attribute_accuracy(captions, self.objects)
        return {"shapes_attribute_accuracy": acc, "shapes_single_object_images": n} if n else {}

    def lines(self, report: Mapping) -> list[str]:
        if "shapes_attribute_accuracy" not in report:
            return []
        return [f"shapes attribute accuracy ({report['shapes_single_object_images']} single-object "
                f"images): {report['shapes_attribute_accuracy']:.4f}"]


def shapes_checks(data_dir: str | Path) -> list[ShapesAttributeCheck]:
    """The checks a data dir opts into by being a shapes set (``vlm data shapes``): none for another dir."""
    objects = shapes_objects(data_dir)
    return [ShapesAttributeCheck(objects)] if objects else []
