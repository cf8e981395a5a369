"""The classifier a fine-tuning run starts from, and its optimizer groups.

- ``start_classifier(cfg, classes)``: the backbone of ``init_from`` (a CLIP / CoCa: its image
  tower; a classifier: its ViT and, when the data's classes are among its labels, its head) or
  a fresh ViT of the named architecture (``model``, default ``tiny``), at ``image_size`` when
  asked (the position embeddings resampled bicubically, as for fine-tuning at a higher
  resolution in ViT, Dosovitskiy et al. 2021). Returns the model, the labels it predicts and
  the loaded pipeline (the text tower for a zero-shot head), or None without ``init_from``.
- ``layer_decay_groups``: AdamW groups with layer-wise learning-rate decay (BEiT, Bao et al.
  2022), on the one weight-decay rule of ``vlm.training.optim``.

    model, labels, pipe = start_classifier(cfg, ["cat", "dog"])
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from vlm.io import configio
from vlm.classify.model import ClassifierConfig, ImageClassifier


def start_classifier(cfg, classes: list[str]):
    """(ImageClassifier, its labels, the pipeline of init_from or None)."""
    image_size = ((cfg.model_overrides or {}).get("vision") or {}).get("image_size")
    want = cfg.classify.head_feature
    pipe = None
    if cfg.init_from:
        _refuse_overrides(cfg)
        model, labels, pipe = _from_checkpoint(cfg, classes, want)
    else:
        model, labels = _fresh(cfg, classes, want or "pooled"), list(classes)
    if image_size is not None and image_size != model.cfg.vision.image_size:
        try:
            model.visual.set_image_size(int(image_size))  # bicubic position-embedding resample
        except ValueError as e:
            raise ValueError(f"model.vision.image_size={image_size}: {e}") from None
        model.cfg = dataclasses.replace(model.cfg, vision=model.visual.cfg)
    if model.cfg.feature == "pooled" and model.cfg.embed_dim is not None:
        model.visual.proj.requires_grad_(False)  # unused by a pooled head (and DDP wants no unused grads)
    return model, labels, pipe


def _fresh(cfg, classes, feature: str) -> ImageClassifier:
    from vlm.training.config import model_config
    from vlm.training.model_setup import init_sincos_

    mc = model_config(cfg)
    # a pooled head on a CLS ViT needs no projection; the attentional pooler works at embed_dim
    embed_dim = mc.embed_dim if feature == "embedding" or mc.vision.pool == "attn" else None
    model = ImageClassifier(ClassifierConfig(labels=list(classes), vision=mc.vision, embed_dim=embed_dim,
                                             feature=feature, preprocess=mc.preprocess))
    if cfg.pos_embed_init == "sincos":
        init_sincos_(model.visual)
    return model


def _from_checkpoint(cfg, classes, want: Optional[str]):
    import vlm.api
    from vlm.classify.backbone import classifier_for
    from vlm.classify.model import classifier_from_backbone

    where = f"init_from={cfg.init_from}"
    pipe = vlm.api.load(cfg.init_from, device="cpu")
    if not getattr(pipe, "is_classifier", False):  # a CLIP / CoCa: its image tower, a new head
        return classifier_from_backbone(pipe.model, classes, want or "pooled").train(), list(classes), pipe
    if cfg.classify.head_init == "zero_shot":
        raise ValueError(f"classify.head_init=zero_shot: {where} is a classifier (no text tower for the class names)")
    own = list(pipe.model.labels)
    keep = all(c in own for c in classes) and want in (None, pipe.model.cfg.feature)
    if not keep and not cfg.classify.new_head:
        unknown = next((c for c in classes if c not in own), None)
        why = (f"class {unknown!r} of data.root={cfg.data.root} is not among its {len(own)} labels"
               if unknown is not None else f"its head reads feature={pipe.model.cfg.feature}")
        raise ValueError(f"{where}: {why}; set classify.new_head=true to train a fresh head")
    labels = own if keep else list(classes)
    model, _, _ = classifier_for(cfg.init_from, labels, want, device="cpu")  # keeps the head when it fits
    return model.train(), labels, pipe


def _refuse_overrides(cfg) -> None:
    where = f"init_from={cfg.init_from}"
    if cfg.model:
        raise ValueError(f"model={cfg.model}: cannot apply with {where}, whose architecture is used; leave model out")
    for key, value in configio.leaves(cfg.model_overrides or {}):
        if key != "vision.image_size":
            raise ValueError(f"model.{key}={value!r}: cannot apply with {where}, whose architecture is used "
                             f"(only model.vision.image_size / image_size applies)")


def layer_id(name: str, depth: int) -> int:
    """0: the patch / position embeddings and the CLS token; i + 1: ViT block i; depth + 1: the rest
    (final norm, pooler, projection, head)."""
    m = re.match(r"visual\.transformer\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(("visual.patch_embed", "visual.pos_embed", "visual.cls_token", "visual.norm_pre")):
        return 0
    return depth + 1


def layer_decay_groups(model: ImageClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: one per (layer, decays) with ``lr_scale = layer_decay ** (depth + 1 - layer)``."""
    from vlm.training.optim import decays

    depth = len(model.visual.transformer.blocks)
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decay = layer_id(name, depth), decays(name, p)
        g = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                               "lr_scale": layer_decay ** (depth + 1 - layer)})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, reverse=True)]  # the head's first: the logged lr is the peak
