"""``ClassifierPipeline``: a loaded ``ImageClassifier`` with its preprocessing, the
supervised counterpart of ``vlm.api.Pipeline`` (``vlm.load`` returns one for a
classifier checkpoint, ``timm:NAME`` or a ViTForImageClassification ``hf:NAME``).

    >>> p = vlm.load("ckpt/probe")
    >>> p.classify(["cat.jpg"], top_k=5)          # the model's own labels
    [[("cat", 0.91), ("dog", 0.05), ...]]
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from vlm.errors import UsageError


class ClassifierPipeline:
    can_caption = False
    is_classifier = True

    def __init__(self, model, preprocess, device: torch.device, name: str = ""):
        self.model = model
        self.preprocess_cfg = preprocess
        self.device = device
        self.name = name

    @property
    def labels(self) -> list[str]:
        return list(self.model.labels)

    @property
    def image_size(self) -> int:
        return self.preprocess_cfg.image_size

    def set_image_size(self, size: int) -> None:
        """Run at another resolution: same patches, bicubically resized position embeddings."""
        import dataclasses

        from vlm.config import check_image_size

        patch = self.model.cfg.vision.patch_size
        try:
            check_image_size(size, patch)
        except ValueError:
            raise UsageError(f"--image-size {size}: must be a positive multiple of the patch size {patch}") from None
        self.preprocess_cfg = dataclasses.replace(self.preprocess_cfg, image_size=size)

    def images_to_tensor(self, images) -> torch.Tensor:
        from vlm.images import load_image, preprocess_batch

        return preprocess_batch([load_image(im) for im in images], self.preprocess_cfg).to(self.device)

    def label_indices(self, labels: Optional[Sequence[str]]) -> list[int]:
        """Indices of ``labels`` among the model's (all of them for None); an unknown label is an error."""
        if labels is None:
            return list(range(len(self.model.labels)))
        own = {name: i for i, name in enumerate(self.model.labels)}
        clean = [str(x).strip() for x in labels]
        unknown = [x for x in clean if x not in own]
        if unknown:
            shown = ", ".join(self.model.labels[:5]) + (", ..." if len(self.model.labels) > 5 else "")
            raise UsageError(f"labels: {unknown[0]!r} is not a label of the classifier {self.name} "
                             f"({len(own)} labels: {shown})")
        return [own[x] for x in clean]

    @torch.inference_mode()
    def logits(self, images) -> torch.Tensor:
        """(N, C) logits over the model's labels."""
        return self.model(self.images_to_tensor(images)).logits.float()

    def classify(self, images, labels: Optional[Sequence[str]] = None, top_k: int = 5,
                 **_ignored) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per image; ``labels`` restricts the choice to those classes."""
        if top_k < 1:
            raise UsageError(f"--top-k {top_k}: must be at least 1")
        idx = self.label_indices(labels)
        names = [self.model.labels[i] for i in idx]
        probs = self.logits(images)[:, idx].softmax(dim=-1)  # (N, C')
        p, j = probs.topk(min(top_k, len(idx)), dim=-1)
        return [[(names[c], float(q)) for q, c in zip(pr.tolist(), jr.tolist())] for pr, jr in zip(p, j)]
