"""``ClassifierPipeline``: a loaded ``ImageClassifier`` with its preprocessing, the
supervised counterpart of ``vlm.api.Pipeline`` (``vlm.load`` returns one for a
classifier checkpoint, ``timm:NAME`` or a ViTForImageClassification ``hf:NAME``).

    >>> p = vlm.load("ckpt/probe")
    >>> p.classify(["cat.jpg"], top_k=5)          # the model's own labels
    [[("cat", 0.91), ("dog", 0.05), ...]]

Images follow the same rules as ``Pipeline``'s (``vlm.io.batches.ImageBatches``): one path or PIL image,
or a list of them (a string is one path, never iterated); ``on_error="return"`` keeps the good
results and puts an ``ImageLoadError`` in place of each image that could not be read.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from vlm.io.batches import ImageBatches
from vlm.errors import InvalidOption, UsageError
from vlm.runtime.limits import DEFAULT_BATCH_SIZE


class ClassifierPipeline(ImageBatches):
    can_caption = False
    is_classifier = True

    def __init__(self, model, preprocess, device: torch.device, name: str = "",
                 batch_size: int = DEFAULT_BATCH_SIZE):
        self.model = model
        self.preprocess_cfg = preprocess
        self.device = device
        self.name = name
        self.batch_size = batch_size

    @property
    def labels(self) -> list[str]:
        return list(self.model.labels)

    @property
    def image_size(self) -> int:
        return self.preprocess_cfg.image_size

    def set_image_size(self, size: int) -> None:
        """Run at another resolution: same patches, bicubically resized position embeddings."""
        import dataclasses

        from vlm.runtime.limits import check_image_size_option

        check_image_size_option(size, self.model.cfg.vision.patch_size)
        self.preprocess_cfg = dataclasses.replace(self.preprocess_cfg, image_size=size)

    def images_to_tensor(self, images) -> torch.Tensor:
        return self._tensor(self.load_images(images))

    def _tensor(self, pil: list) -> torch.Tensor:
        from vlm.io.images import preprocess_batch
        from vlm.runtime.precision import input_dtype

        return preprocess_batch(pil, self.preprocess_cfg).to(self.device, input_dtype(self.model))

    def label_indices(self, labels: Optional[Sequence[str]]) -> list[int]:
        """Indices of ``labels`` among the model's (all of them for None); an unknown label is an error."""
        from vlm.classify.prompts import check_labels

        if labels is None:
            return list(range(len(self.model.labels)))
        own = {name: i for i, name in enumerate(self.model.labels)}
        clean = check_labels(labels)  # a string is refused, never iterated
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

    @torch.inference_mode()
    def classify(self, images, labels: Optional[Sequence[str]] = None, top_k: int = 5, *,
                 on_error: str = "raise", **_ignored) -> list:
        """Top-k (label, probability) per image; ``labels`` restricts the choice to those classes.

        Zero-shot options (``templates``, ``label_embeds``) are accepted and ignored: the head is trained."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidOption("top_k", top_k, "must be at least 1")
        idx = self.label_indices(labels)
        names = [self.model.labels[i] for i in idx]
        results: list = []
        for pil, where, results in self._batches(images, on_error):
            if not pil:
                continue
            probs = self.model(self._tensor(pil)).logits.float()[:, idx].softmax(dim=-1)  # (N, C')
            p, j = probs.topk(min(top_k, len(idx)), dim=-1)
            for n, pr, jr in zip(where, p.tolist(), j.tolist()):
                results[n] = [(names[c], float(q)) for q, c in zip(pr, jr)]
        return results
