"""Evaluate a classifier on labelled images: top-1, top-5, per-class recall and the confusion
matrix (rows: true class, columns: predicted), over the classes the data holds.

    vlm evaluate --model ckpt/probe --data data/shapes_cls/test --plot confusion.png
    >>> report, conf = evaluate_classifier(model, preprocess, dataset)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from vlm.classify.metrics import confusion_matrix, per_class_recall, top_k_accuracy
from vlm.classify.probe import embed


@torch.no_grad()
def evaluate_classifier(model, preprocess, dataset, batch_size: int = 64, progress=None,
                        on_skip: Optional[Callable[[str, str], None]] = None) -> tuple[dict, torch.Tensor]:
    """``dataset``'s targets must index ``model.labels`` (``LabelledImages.remap``); ``progress``
    is called with the number of images of each batch once it is done, ``on_skip`` with (path,
    reason) of each image that could not be read (counted in ``skipped``; else the first few are logged)."""
    feats = embed(model, preprocess, dataset, batch_size, progress=progress, on_skip=on_skip)
    device = next(model.parameters()).device
    logits = model.head(feats.x.to(device)).float().cpu() if len(feats.y) else torch.empty(0, len(model.labels))
    conf = confusion_matrix(logits.argmax(dim=1), feats.y, len(model.labels)) if len(feats.y) else \
        torch.zeros(len(model.labels), len(model.labels), dtype=torch.long)
    present = sorted(set(feats.y.tolist()))
    recall = per_class_recall(conf)
    report = {"images": len(feats.y), "skipped": feats.skipped, "classes": len(present),
              "top1": top_k_accuracy(logits, feats.y, 1), "top5": top_k_accuracy(logits, feats.y, 5),
              "per_class_recall": {model.labels[i]: recall[i] for i in present}}
    return report, conf[present][:, present]


def confusion_plot(conf: torch.Tensor, labels: list, path) -> None:
    """A labelled confusion-matrix heatmap (counts in the cells) written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(conf.numpy(), cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 40:
        top = max(int(conf.max()), 1)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if conf[i, j] > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
