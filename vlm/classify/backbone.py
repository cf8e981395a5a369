"""A classifier ready to train or probe, from any vlm model name: the image tower of a
CLIP / CoCa (``vlm.load`` names: a checkpoint dir, ``open_clip:``, ``hf:``) or an existing
classifier (``timm:``, a classifier checkpoint), with a fresh zero head for new labels.

    >>> model, preprocess = classifier_for("ckpt/coca", ["cat", "dog"], feature="embedding")
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Sequence

from vlm.classify.model import ClassifierConfig, ImageClassifier, classifier_from_backbone


def classifier_for(name: Optional[str], labels: Sequence[str], feature: Optional[str] = None,
                   device: Optional[str] = "cpu"):
    """(ImageClassifier with a zero head over ``labels``, PreprocessConfig, the loaded pipeline).

    ``feature=None``: "embedding" on a CLIP / CoCa (its contrastive embedding, as the CLIP
    linear probe), the classifier's own feature on a classifier."""
    import vlm.api
    from vlm.io.images import PreprocessConfig

    pipe = vlm.api.load(name, device=device)
    src = pipe.model
    if getattr(pipe, "is_classifier", False):
        cfg = dataclasses.replace(copy.deepcopy(src.cfg), labels=list(labels), feature=feature or src.cfg.feature)
        cfg.validate()
        model = ImageClassifier(cfg)
        model.visual.load_state_dict(src.visual.state_dict())
        if list(labels) == list(src.labels) and cfg.feature == src.cfg.feature:
            model.head.load_state_dict(src.head.state_dict())  # the same task: keep the trained head
    else:
        model = classifier_from_backbone(src, labels, feature or "embedding")
    return model.to(pipe.device), PreprocessConfig.for_model(model.cfg), pipe


__all__ = ["ClassifierConfig", "classifier_for"]
