"""Training losses, kept outside the model.

- ``contrastive_loss``: CLIP's symmetric cross-entropy over the image-text
  cosine-similarity matrix. Under torch.distributed the features of every
  process are gathered (with gradients, also when the processes hold different
  batch sizes) and the labels come from the gathered batch, so each process
  computes exactly the single-process loss of the global batch.
- ``caption_loss``: next-token cross-entropy that ignores padding, with optional
  label smoothing.
- ``CoCaLoss``: the weighted sum, returning every named part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vlm.model.coca import ModelOutput


def _batch_sizes(x: Tensor) -> list[int]:
    """Every process's batch size, in rank order (they differ when images were skipped)."""
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def gather_features(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate (B, E) features from every process in rank order, keeping gradients.

    Processes may hold different B (a batch that lost unreadable images): each
    pads to the largest B for the collective and the padding is cut off again.
    ``sizes`` (from ``_batch_sizes``) saves a collective when already known.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_single

    sizes = sizes or _batch_sizes(x)
    if len(set(sizes)) == 1:
        return all_gather_single(x.contiguous(), 0, dist.group.WORLD)  # (world * B, E)
    b = max(sizes)
    padded = F.pad(x, (0, 0, 0, b - x.shape[0]))  # (max B, E)
    gathered = all_gather_single(padded, 0, dist.group.WORLD)  # (world * max B, E)
    return torch.cat([gathered[r * b:r * b + n] for r, n in enumerate(sizes)], dim=0)  # (sum B, E)


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE over the (gathered) batch; row i of each matches column i."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    sizes = _batch_sizes(image_embeds) if distributed else None
    img, txt = gather_features(image_embeds, sizes), gather_features(text_embeds, sizes)
    logits = logit_scale * img @ txt.t()  # (N, N), N = global batch
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def caption_loss(logits: Tensor, labels: Tensor, pad_id: int = 0, label_smoothing: float = 0.0) -> Tensor:
    """Mean token cross-entropy of (B, T, V) logits against (B, T) labels, padding ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing)


@dataclass
class CoCaLoss:
    contrastive_weight: float = 1.0  # 0 switches the contrastive head off
    caption_weight: float = 2.0  # 0 switches the caption head off (CoCa uses 2)
    label_smoothing: float = 0.0
    pad_id: int = 0

    def __call__(self, out: ModelOutput) -> dict[str, Tensor]:
        parts: dict[str, Tensor] = {}
        total = out.image_embeds.new_zeros(())
        if self.contrastive_weight and out.text_embeds is not None:
            parts["contrastive"] = contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale)
            total = total + self.contrastive_weight * parts["contrastive"]
        if self.caption_weight and out.caption_logits is not None:
            parts["caption"] = caption_loss(out.caption_logits, out.caption_labels, self.pad_id,
                                            self.label_smoothing)
            total = total + self.caption_weight * parts["caption"]
        parts["total"] = total
        return parts
