"""Does a caption name the right color and shape? A check for single-object shapes images.

For the procedural shapes data (``vlm.data.shapes``) each image entry of
``captions.json`` lists its ``objects``. On images holding exactly one object,
a caption counts as correct when the color words it uses are exactly that
object's color and the shape words exactly its shape (plural forms included),
e.g. "a small red star in the top left of the image" for a red star. This is
an attribute-level check in the spirit of SPICE (Anderson et al. 2016), exact
here because the scene graph is known.

    shapes_attribute_accuracy({1: "a red star"}, {1: [{"color": "red", "shape": "star"}]})  # -> (1.0, 1)

Run: ``python -c "from vlm.evaluation.shapes_check import shapes_attribute_accuracy"``.
"""

from __future__ import annotations

import re
from typing import Hashable, Mapping, Sequence

from vlm.data.shapes import COLORS, SHAPES

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
