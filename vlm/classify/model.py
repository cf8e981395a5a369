"""An image classifier: a vlm ViT and a linear head, with the label names it predicts.

The recipe of the ViT paper (Dosovitskiy et al. 2021): the transformer's pooled
(CLS) token, after the final LayerNorm, goes through one linear layer to the
class logits. The backbone can be the image tower of a CLIP or a CoCa, or an
imported timm / Hugging Face classifier. ``ClassifierConfig.feature`` says what
the head reads:

- ``"pooled"``: the pooled / CLS feature *before* the contrastive projection
  (width of the ViT). timm and Hugging Face classifiers use it; it is the
  default for fine-tuning.
- ``"embedding"``: the L2-normalised contrastive embedding *after* the
  projection. The linear probe of CLIP and CLIP_benchmark reads it, and a head
  initialised from class-name text embeddings (zero-shot init, WiSE-FT / FLYP)
  reproduces zero-shot classification exactly on it.

    >>> model = ImageClassifier(cfg)
    >>> model(images).logits          # (B, num_classes)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.io import configio
from vlm.model.config import PreprocessConfig, VisionConfig, check_vision_input, vision_config_dict
from vlm.model.vit import VisionTransformer

FEATURES = ("pooled", "embedding")


@dataclass
class ClassifierConfig:
    labels: list  # class names, index i is logit i
    vision: VisionConfig = field(default_factory=VisionConfig)
    embed_dim: Optional[int] = None  # contrastive projection size; None: the backbone has no projection
    feature: str = "pooled"  # what the head reads: "pooled" (before the projection) or "embedding" (after)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # size: vision.image_size
    model_type: str = "classifier"  # the key config.json is recognised by

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = configio.from_dict(VisionConfig, self.vision, "classifier config", prefix="vision.")
        if isinstance(self.preprocess, dict):
            self.preprocess = configio.from_dict(PreprocessConfig, self.preprocess, "classifier config",
                                                 prefix="preprocess.")
        self.labels = [str(x) for x in self.labels]
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> None:
        if self.model_type != "classifier":
            raise ValueError(f"model_type must be 'classifier', got {self.model_type!r}")
        if len(self.labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {len(self.labels)}")
        blank = [i for i, x in enumerate(self.labels) if not x.strip()]
        if blank:
            raise ValueError(f"label {blank[0]} of {len(self.labels)} is blank")
        if len(set(self.labels)) != len(self.labels):
            dup = next(x for x in self.labels if self.labels.count(x) > 1)
            raise ValueError(f"label {dup!r} appears more than once")
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {self.feature!r}")
        if self.feature == "embedding" and self.embed_dim is None:
            raise ValueError("feature='embedding' needs a backbone with a contrastive projection (embed_dim)")
        if self.vision.pool == "attn" and self.embed_dim is None:
            raise ValueError("an attentional-pooler ViT needs embed_dim")
        check_vision_input(self.vision, self.preprocess)

    @property
    def feature_dim(self) -> int:
        if self.feature == "embedding":
            return int(self.embed_dim)
        return int(self.embed_dim) if self.vision.pool == "attn" else self.vision.width

    def to_dict(self) -> dict[str, Any]:
        return vision_config_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "classifier config") -> "ClassifierConfig":
        return configio.from_dict(cls, d, source)


@dataclass
class ClassifierOutput:
    logits: Tensor  # (B, num_classes)
    features: Tensor  # (B, feature_dim) what the head read


class ImageClassifier(nn.Module):
    """``visual`` (a ``VisionTransformer``, same parameter names as in CLIP/CoCa) + ``head``."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)
        nn.init.zeros_(self.head.weight)  # a fresh head starts at chance (uniform probabilities)
        nn.init.zeros_(self.head.bias)

    @property
    def labels(self) -> list[str]:
        return self.cfg.labels

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, feature_dim): the input of the head."""
        pooled, _ = self.visual.pool(self.visual.forward_features(images))
        if self.cfg.feature == "embedding":
            return F.normalize(self.visual.proj(pooled), dim=-1)
        return pooled

    def forward(self, images: Tensor) -> ClassifierOutput:
        f = self.features(images)
        return ClassifierOutput(logits=self.head(f), features=f)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable

    @torch.no_grad()
    def set_head(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        """Put (C, feature_dim) weights (and (C,) biases, default 0) into the head."""
        self.head.weight.copy_(weight.to(self.head.weight))
        self.head.bias.copy_(bias.to(self.head.bias) if bias is not None else torch.zeros_like(self.head.bias))


def classifier_from_backbone(backbone, labels: list, feature: str = "pooled") -> ImageClassifier:
    """A classifier on the image tower of a CLIP / CoCa (weights copied) with a zero head."""
    cfg = ClassifierConfig(labels=list(labels), vision=dataclasses.replace(backbone.cfg.vision),
                           embed_dim=backbone.cfg.embed_dim, feature=feature,
                           preprocess=dataclasses.replace(backbone.cfg.preprocess))
    model = ImageClassifier(cfg)
    model.visual.load_state_dict(backbone.visual.state_dict())
    return model
