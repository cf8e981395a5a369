"""Zero-shot classification accuracy from logits.

``topk_accuracy(logits, labels, ks=(1, 5))`` returns ``{"top1": ..., "top5":
...}``: the share (0..1) of rows whose label is among the k highest logits.
With fewer classes than k every row counts as correct (top-k over C < k
classes is top-C).  Ties count against the model: a wrong class scoring
exactly as high as the label ranks before it.

Run: ``python -c "from vlm.evaluation.zeroshot import topk_accuracy"``
(used by the zero-shot evaluation code).
"""

from __future__ import annotations

from typing import Sequence

import torch


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy for each k in ``ks`` (keys ``top{k}``)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits: must be a 2-D tensor (N, C), got {getattr(logits, 'shape', type(logits))}")
    n, num_classes = logits.shape
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if labels.numel() != n:
        raise ValueError(f"labels: has {labels.numel()} entries for {n} rows of logits")
    if n == 0 or num_classes == 0:
        raise ValueError(f"logits: empty tensor of shape {tuple(logits.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels: must be in 0..{num_classes - 1}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks={tuple(ks)}: need at least one k >= 1")
    scores = torch.nan_to_num(logits.detach().float().cpu(), nan=float("-inf"))  # NaN: never right
    own = scores.gather(1, labels[:, None])
    # rank of the label (0 = best): other classes scoring at least as high
    rank = (scores >= own).sum(dim=1) - 1
    return {f"top{int(k)}": float((rank < int(k)).float().mean()) for k in ks}


__all__ = ["topk_accuracy"]
