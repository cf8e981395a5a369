"""Classification metrics: top-k accuracy, per-class recall and the confusion matrix.

    >>> top_k_accuracy(logits, targets, k=5)        # fraction of rows whose target is in the top k
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_accuracy(logits: Tensor, targets: Tensor, k: int = 1) -> float:
    """(N, C) logits, (N,) int targets -> fraction with the target among the k highest logits."""
    if len(targets) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1)  # (N,)
    return float(hit.float().mean())


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = targets.long() * num_classes + preds.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_recall(conf: Tensor) -> list:
    """Recall of each true class (None for a class with no images)."""
    totals = conf.sum(dim=1)
    return [float(conf[i, i] / totals[i]) if totals[i] > 0 else None for i in range(conf.shape[0])]
