"""Is an image far from what a model was trained on? A Mahalanobis check on the ViT's own features.

The shipped default model knows procedural shapes scenes only; on a photo it still writes a
shapes caption. ``ood.safetensors`` beside a checkpoint holds a Gaussian fitted to the model's
image features on its training distribution (the mean over all tokens of the last ViT block,
``VisionTransformer.forward_features``), and a threshold: an image whose Mahalanobis distance
(Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples") exceeds
it is far from that distribution. The Gaussian and the threshold are calibrated on shapes scenes
that ``vlm data shapes`` makes (scripts/calibrate_ood.py); nothing looks at file names or pixels.

    >>> check = OODCheck.for_checkpoint("vlm/pretrained/default")   # None without ood.safetensors
    >>> check.distances(model, images)                               # (B,) Mahalanobis distances
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

FILE = "ood.safetensors"
PHOTO_MODEL = ("open_clip:coca_ViT-B-32", "laion2b_s13b_b90k")  # a CoCa trained on LAION-2B photos


class OutOfDistributionWarning(UserWarning):
    """Images far from the model's training distribution: its captions and labels mean little."""

    def __init__(self, name: str, about: str, far: int, total: int):
        self.name, self.about, self.far, self.total = name, about, far, total
        arch, tag = PHOTO_MODEL
        super().__init__(f"{self._what()}; for photos load a photo model, e.g. vlm.load(\"{arch}@{tag}\")")

    def _what(self) -> str:
        return (f"{self.far} of {self.total} images are far from what the {self.name} model was trained on "
                f"({self.about}), so its outputs mean little there")

    def cli_message(self) -> str:
        arch, tag = PHOTO_MODEL
        return f"{self._what()}; for photos use --model {arch} --pretrained {tag}"


@dataclass
class OODCheck:
    mean: Tensor  # (D,) feature mean on the training distribution
    whiten: Tensor  # (D, D) W with W W^T = inverse covariance: distance = |(x - mean) W|
    threshold: float  # distances above this are far from the training distribution
    image_size: int  # the input size the statistics hold for
    about: str  # what the model was trained on, for the notice

    @classmethod
    def for_checkpoint(cls, directory) -> Optional["OODCheck"]:
        path = Path(directory) / FILE if directory else None
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            mean, whiten = f.get_tensor("mean"), f.get_tensor("whiten")
        info = json.loads(meta.get("calibration", "{}"))
        return cls(mean.float(), whiten.float(), float(info["threshold"]), int(info["image_size"]),
                   str(info.get("about", "its training data")))

    @staticmethod
    def features(model, images: Tensor) -> Tensor:
        """(B, D): the mean over all tokens of the last ViT block's output."""
        with torch.inference_mode():
            return model.visual.forward_features(images).float().mean(dim=1)  # (B, 1+N, D) -> (B, D)

    def distances(self, model, images: Tensor) -> Tensor:
        x = self.features(model, images) - self.mean.to(images.device)
        return (x @ self.whiten.to(images.device)).norm(dim=-1)  # (B,)

    def far(self, model, images: Tensor) -> Optional[Tensor]:
        """(B,) bool, or None when the images are not at the calibrated size."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            return None
        return self.distances(model, images) > self.threshold


class OODNotice:
    """Warns once per pipeline (an ``OutOfDistributionWarning``) when images are far from the data."""

    def __init__(self, check: Optional[OODCheck], name: str):
        self.check = check
        self.name = name
        self.said = False

    def __call__(self, model, images: Tensor) -> None:
        if self.check is None or self.said or images.shape[0] == 0:
            return
        far = self.check.far(model, images)
        if far is None or not bool(far.any()):
            return
        self.said = True
        warnings.warn(OutOfDistributionWarning(self.name, self.check.about, int(far.sum()), images.shape[0]),
                      stacklevel=3)
