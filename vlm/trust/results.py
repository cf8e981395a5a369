"""API results that carry the per-image out-of-distribution flag (``vlm.trust.ood``) and still
behave as before: a caption is a ``str``, a classification a ``list`` of (label, probability).

    >>> caps = vlm.load().caption(["cat.jpg"])
    >>> caps[0], caps[0].ood          # ('a small blue triangle', True)

``ood`` is True or False when the model has an out-of-distribution profile, None when it has none.
"""

from __future__ import annotations

from typing import Optional


class Caption(str):
    """One image's caption; ``.ood``: the image looks far from the model's training data."""

    ood: Optional[bool]

    def __new__(cls, text: str, ood: Optional[bool] = None) -> "Caption":
        obj = super().__new__(cls, text)
        obj.ood = ood
        return obj

    def __reduce__(self):
        return (Caption, (str(self), self.ood))


class TopLabels(list):
    """One image's top-k (label, probability) pairs; ``.ood`` as for ``Caption``."""

    def __init__(self, pairs=(), ood: Optional[bool] = None) -> None:
        super().__init__(pairs)
        self.ood = ood

    def __reduce__(self):
        return (TopLabels, (list(self), self.ood))
