"""Is an image far from what a model was trained on? A Mahalanobis check on the ViT's own features.

The shipped default model knows procedural shapes scenes only; on a photo it still writes a
shapes caption. ``ood.safetensors`` beside a checkpoint holds a Gaussian fitted to the model's
image features on its training distribution and a threshold: an image whose Mahalanobis distance
(Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples") exceeds
it is far from that distribution. The feature (``FEATURES``) is the last ViT block's CLS token
beside the mean of its patch tokens (``VisionTransformer.forward_features``); profiles written
before it (``"tokens_mean"``: the mean over all tokens) still load and run as they were calibrated.
The threshold is a high quantile of the distances of held-out shapes scenes (the false-alarm
target); images that are not shapes scenes only verify it (scripts/calibrate_ood.py,
BENCHMARKS.md). Nothing looks at file names.

    >>> check = OODCheck.for_checkpoint("vlm/pretrained/default")   # None without ood.safetensors
    >>> check.far(model, images)                                     # (B,) bool
    >>> with notice.run(): ...                                       # one warning per run, every image counted
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from vlm.errors import ModelError

FILE = "ood.safetensors"
PHOTO_MODEL = ("open_clip:coca_ViT-B-32", "laion2b_s13b_b90k")  # a CoCa trained on LAION-2B photos
FEATURES = ("cls_and_patch_mean", "tokens_mean")  # the current feature first; the second is the legacy one


class OutOfDistributionWarning(UserWarning):
    """Images far from the model's training distribution: its captions and labels mean little."""

    def __init__(self, name: str, about: str, far: int, total: int):
        self.name, self.about, self.far, self.total = name, about, far, total
        arch, tag = PHOTO_MODEL
        super().__init__(f"{self._what()}; for photos load a photo model, e.g. vlm.load(\"{arch}@{tag}\")")

    def _what(self) -> str:
        return (f"{self.far} of {self.total} images look far from what the {self.name} model was trained on "
                f"({self.about}), so its outputs mean little there")

    def cli_message(self) -> str:
        arch, tag = PHOTO_MODEL
        return f"{self._what()}; for photos use --model {arch} --pretrained {tag}"


@dataclass
class OODCheck:
    mean: Tensor  # (D,) feature mean on the training distribution
    whiten: Tensor  # (D, D) W with W W^T = inverse covariance: distance = |(x - mean) W|
    threshold: float  # distances above this are far from the training distribution
    image_size: int  # the input size the statistics hold for; other sizes are resized to it
    about: str  # what the model was trained on, for the notice
    feature: str = FEATURES[0]  # which image feature the Gaussian describes (FEATURES)

    @classmethod
    def for_checkpoint(cls, directory) -> Optional["OODCheck"]:
        """The profile in ``directory/ood.safetensors``; None without one; ModelError for a damaged one."""
        path = Path(directory) / FILE if directory else None
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                mean, whiten = f.get_tensor("mean"), f.get_tensor("whiten")
            info = json.loads(meta.get("calibration", "{}"))
            check = cls(mean.float(), whiten.float(), float(info["threshold"]), int(info["image_size"]),
                        str(info.get("about", "its training data")), str(info.get("feature_kind", FEATURES[1])))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise ModelError(f"{path}: not an out-of-distribution profile ({type(e).__name__}: {e})") from None
        if check.feature not in FEATURES:
            raise ModelError(f"{path}: feature {check.feature!r} is not one of {', '.join(FEATURES)}")
        d = check.mean.shape[0] if check.mean.dim() == 1 else -1
        if d < 1 or tuple(check.whiten.shape) != (d, d):
            raise ModelError(f"{path}: mean {tuple(check.mean.shape)} and whiten {tuple(check.whiten.shape)} "
                             f"do not describe one Gaussian")
        return check

    @staticmethod
    def features(model, images: Tensor, feature: str = FEATURES[0]) -> Tensor:
        """(B, D) image features of ``feature`` kind from the last ViT block."""
        with torch.inference_mode():
            x = model.visual.forward_features(images).float()  # (B, prefix + N, W)
        if feature == "tokens_mean":
            return x.mean(dim=1)  # (B, W)
        prefix = model.visual.num_prefix
        patches = x[:, prefix:].mean(dim=1)  # (B, W)
        return torch.cat([x[:, 0], patches], dim=-1) if prefix else patches  # (B, 2W) with a CLS token

    def distances(self, model, images: Tensor) -> Tensor:
        """(B,) Mahalanobis distances; images at another size are resized to the calibrated one."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = torch.nn.functional.interpolate(images, size=(self.image_size, self.image_size),
                                                     mode="bilinear", antialias=True, align_corners=False)
        x = self.features(model, images, self.feature) - self.mean.to(images.device)
        return (x @ self.whiten.to(images.device)).norm(dim=-1)  # (B,)

    def far(self, model, images: Tensor) -> Tensor:
        """(B,) bool: True where an image is far from the training distribution."""
        return self.distances(model, images) > self.threshold


class OODNotice:
    """Checks images and counts them over a run; at the end of the outermost run, one
    ``OutOfDistributionWarning`` "N of M images look far from ..." when N > 0."""

    def __init__(self, check: OODCheck, name: str):
        self.check = check
        self.name = name
        self.depth = 0
        self.far = self.total = 0

    def __call__(self, model, images: Tensor) -> list[bool]:
        """The per-image flags of ``images`` (B, 3, S, S), counted into the current run."""
        if images.shape[0] == 0:
            return []
        flags = self.check.far(model, images).tolist()
        self.far += sum(flags)
        self.total += len(flags)
        return flags

    def run(self) -> "_Run":
        """A context: every image checked inside is counted; the outermost one warns once on exit."""
        return _Run(self)


class _Run:
    def __init__(self, notice: OODNotice):
        self.notice = notice

    def __enter__(self) -> OODNotice:
        if self.notice.depth == 0:
            self.notice.far = self.notice.total = 0
        self.notice.depth += 1
        return self.notice

    def __exit__(self, kind, exc, tb) -> None:
        n = self.notice
        n.depth -= 1
        if n.depth == 0 and kind is None and n.far:
            warnings.warn(OutOfDistributionWarning(n.name, n.check.about, n.far, n.total), stacklevel=3)
