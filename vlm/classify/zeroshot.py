"""Zero-shot classifiers from class names (CLIP, Radford et al. 2021, sec. 3.1.4): each class is
embedded through every prompt template, the normalised embeddings are averaged and renormalised.

``class_embeddings`` builds them at scale: the prompts are tokenised once, sorted by length
and run in batches of similar length, and the text tower runs no trailing padding (exact for a
causal tower), so 1,000 classes x 18 templates cost a fraction of running every prompt at 77
positions (open_clip's ``build_zero_shot_classifier``; benchmarks/zeroshot.py).

``zero_shot_head`` puts them in a classifier's head (WiSE-FT, Wortsman et al. 2022; FLYP):
on the ``"embedding"`` feature, logits = logit_scale * cosine, exactly the zero-shot logits,
so fine-tuning starts from the zero-shot accuracy instead of chance.

    >>> emb = class_embeddings(pipe, ["cat", "dog"], ["a photo of a {}."])     # (2, E)
    >>> zero_shot_head(classifier, pipe, templates=["a photo of a {}."])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vlm.errors import UsageError
from vlm.classify.prompts import check_labels, check_templates


@torch.no_grad()
def class_embeddings(pipe, labels: Sequence[str], templates: Optional[Sequence[str]] = None,
                     batch_size: int = 256) -> torch.Tensor:
    """(C, E) prompt-ensemble class embeddings, the same as ``Pipeline.label_embeddings``: the
    labels and templates follow the same rules (``vlm.classify.prompts``)."""
    labels = check_labels(labels)
    templates = check_templates(templates or pipe.templates)
    words = pipe.label_words(labels, templates) if hasattr(pipe, "label_words") else None
    if words is not None:  # one warning naming the class or template words the model never learned
        words.warn(pipe.name, len(pipe.caption_words))
    model, tok = pipe.model, pipe.tokenizer
    ids = tok([t.format(x) for x in labels for t in templates], context_length=model.cfg.text.context_length)
    lengths = (ids != tok.pad_id).sum(dim=1)  # (C*T,) tokens before the trailing padding
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(ids), model.cfg.embed_dim)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = model.encode_text(ids[rows].to(pipe.device)).float().cpu()  # trimmed to this batch's longest
    emb = out.view(len(labels), len(templates), -1)  # (C, T, E)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zero_shot_head(classifier, pipe, labels: Optional[Sequence[str]] = None,
                   templates: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Set ``classifier.head`` to logit_scale x the class embeddings of its labels; returns them."""
    if classifier.cfg.feature != "embedding":
        raise UsageError("zero-shot head initialisation needs feature='embedding' (the contrastive embedding)")
    emb = class_embeddings(pipe, labels or classifier.labels, templates)
    classifier.set_head(pipe.model.logit_scale.exp().float() * emb)
    return emb
