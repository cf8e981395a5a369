"""Image-text retrieval recall@k from a similarity matrix.

``retrieval_recall(similarity, text_to_image)`` takes scores of shape
(N_images, N_texts) and, for each text, the index of its image, and returns

* ``i2t_r{k}``: share of images for which at least one of their captions is
  among the k highest-scoring texts (image -> text retrieval);
* ``t2i_r{k}``: share of texts whose image is among the k highest-scoring
  images (text -> image retrieval);
* ``i2t_r{k}_worst`` / ``t2i_r{k}_worst``: the same with every tie counted
  against the model (the pessimistic bound);
* ``i2t_mean_rank`` / ``t2i_mean_rank`` (1 = first, ties against the model), and
  ``rsum`` (sum of the six recalls, in percent as usually reported).

Recalls are fractions in 0..1. The k highest-scoring items are the ones ``torch.topk``
returns, as CLIP_benchmark (1.6.2, ``metrics/zeroshot_retrieval.py``) and torchmetrics'
retrieval recall choose them, on a (texts, images) score matrix as CLIP_benchmark lays it
out: these are the figures published tables use. Where several items score exactly as
high as the k-th, ``topk`` keeps some of them and not others (its order among equal
scores is not documented), so a right item tied with wrong ones may count as found.
Ties are common where captions repeat (shapes scenes: two images' captions can be the
same text, so their embeddings and scores are equal). The ``_worst`` figures rank a wrong
item that scores exactly as high as the right one before it: a constant similarity
matrix gets the lowest recall there. A figure and its bound differ only through ties.

Run: ``python -c "from vlm.evaluation.retrieval import retrieval_recall"``
(used by the training and evaluation code).
"""

from __future__ import annotations

from typing import Sequence

import torch


def _check(similarity: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int]) -> torch.Tensor:
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        got = getattr(similarity, "shape", type(similarity).__name__)
        raise ValueError(f"similarity: must be a 2-D tensor (N_images, N_texts), got {got}")
    n_images, n_texts = similarity.shape
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"similarity: empty matrix of shape {tuple(similarity.shape)}")
    t2i = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if t2i.numel() != n_texts:
        raise ValueError(f"text_to_image: has {t2i.numel()} entries for {n_texts} texts")
    if t2i.min() < 0 or t2i.max() >= n_images:
        raise ValueError(f"text_to_image: indices must be in 0..{n_images - 1}")
    if torch.bincount(t2i, minlength=n_images).eq(0).any():
        lonely = int(torch.bincount(t2i, minlength=n_images).eq(0).nonzero()[0])
        raise ValueError(f"text_to_image: image {lonely} has no text")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks={tuple(ks)}: need at least one k >= 1")
    return t2i


def retrieval_recall(
    similarity: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways (see the module docstring)."""
    t2i = _check(similarity, text_to_image, ks)
    sim = torch.nan_to_num(similarity.detach().float().cpu(), nan=float("-inf"))  # NaN: never right
    n_images, n_texts = sim.shape
    own = torch.zeros(n_images, n_texts, dtype=torch.bool)
    own[t2i, torch.arange(n_texts)] = True
    scores = sim.t().contiguous()  # (N_texts, N_images), CLIP_benchmark's layout: topk breaks ties the same way

    # image -> text: rank of the best own caption = wrong texts scoring >= it
    best_own = sim.masked_fill(~own, float("-inf")).max(dim=1).values
    i2t_rank = ((sim >= best_own[:, None]) & ~own).sum(dim=1)
    # text -> image: rank of the own image = other images scoring >= it
    own_score = sim[t2i, torch.arange(n_texts)]
    t2i_rank = (sim >= own_score[None, :]).sum(dim=0) - 1

    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{int(k)}"] = _topk_recall(scores.t(), own, int(k))
    for k in ks:
        out[f"t2i_r{int(k)}"] = _topk_recall(scores, own.t(), int(k))
    for k in ks:
        out[f"i2t_r{int(k)}_worst"] = float((i2t_rank < int(k)).float().mean())
    for k in ks:
        out[f"t2i_r{int(k)}_worst"] = float((t2i_rank < int(k)).float().mean())
    out["i2t_mean_rank"] = float(i2t_rank.float().mean() + 1)
    out["t2i_mean_rank"] = float(t2i_rank.float().mean() + 1)
    out["rsum"] = 100.0 * sum(out[f"{d}_r{int(k)}"] for d in ("i2t", "t2i") for k in ks)
    return out


def _topk_recall(scores: torch.Tensor, positive: torch.Tensor, k: int) -> float:
    """Share of queries (rows of (Q, N) ``scores``) with a positive among the ``torch.topk`` k best
    (k capped at N); ``positive`` is (Q, N) bool."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (Q, k)
    return float(positive.gather(1, top).any(dim=1).float().mean())


__all__ = ["retrieval_recall"]
