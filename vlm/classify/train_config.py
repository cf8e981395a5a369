"""The ``classify:`` section of a training config (``TrainConfig.classify``): what fine-tuning a
ViT classifier needs beyond the shared recipe (lr, schedule, label_smoothing, mixed precision...).

The data are ``data.root`` (training) and ``data.val_root`` (validation, optional): a
class-per-folder directory, a ``path,label`` CSV or ``hf:SPEC[@SPLIT]`` (``data.kind: hf`` adds
the ``hf:``). The backbone is ``init_from`` (a CLIP / CoCa checkpoint or name, a classifier
checkpoint, an imported classifier) or, without it, a fresh ViT of the named architecture.

    task: classify
    init_from: default
    classify: {head_init: zero_shot, layer_decay: 0.75}

``check_applies(cfg)`` refuses, in one line, a setting the chosen task would ignore. This module
is light (no torch): the config loader imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HEAD_INITS = ("zero", "zero_shot", "probe")
FEATURES = ("pooled", "embedding")


@dataclass
class ClassifyConfig:
    # what the head reads: pooled (the pooled/CLS token, before the contrastive projection) or
    # embedding (the normalised embedding after it); None: embedding for head_init=zero_shot, else pooled
    feature: Optional[str] = None
    # the head's start: zero (chance), zero_shot (the class names through the prompt templates,
    # WiSE-FT/FLYP; a CLIP/CoCa init_from), probe (a logistic-regression probe on the frozen
    # features, weight decay chosen on the validation set: linear-probe-then-fine-tune, LP-FT)
    head_init: str = "zero"
    templates: Optional[list[str]] = None  # head_init=zero_shot prompt templates (None: the checkpoint's)
    freeze_backbone: bool = False  # train the head alone (a linear probe trained by the loop)
    # layer-wise lr decay (BEiT, Bao et al. 2022): block i of L trains at lr * layer_decay**(L - i),
    # the patch/position embeddings at lr * layer_decay**(L + 1), the head and final norm at lr; 1: off
    layer_decay: float = 1.0
    new_head: bool = False  # init_from a classifier whose labels are not the data's: train a fresh head
    # random-resized crops of the training images, each keeping a share of the area in [random_crop, 1]
    # (Inception's 0.08; about 0.7 for small objects that a crop would cut); None: off. Validation: never
    random_crop: Optional[float] = None

    def __post_init__(self):
        if self.feature is not None and self.feature not in FEATURES:
            raise ValueError(f"feature={self.feature!r}: must be pooled or embedding")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r}: must be one of {', '.join(HEAD_INITS)}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay={self.layer_decay}: must be in (0, 1]")
        if self.templates is not None and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ValueError("templates: give at least one, each with {} where the class name goes")
        if self.random_crop is not None and not 0 < self.random_crop <= 1:
            raise ValueError(f"random_crop={self.random_crop}: must be in (0, 1] (or null: no crops)")

    def check(self) -> None:
        """The rules between fields (checked on the whole config: one override may set one field)."""
        if self.head_init == "zero_shot" and self.feature == "pooled":
            raise ValueError("classify.head_init=zero_shot: needs classify.feature=embedding (the contrastive embedding)")
        if self.templates is not None and self.head_init != "zero_shot":
            raise ValueError("classify.templates: apply only with classify.head_init=zero_shot")
        if self.freeze_backbone and self.layer_decay != 1:
            raise ValueError("classify.layer_decay: cannot apply with classify.freeze_backbone=true (only the head trains)")

    @property
    def head_feature(self) -> Optional[str]:
        return self.feature or ("embedding" if self.head_init == "zero_shot" else None)


# TrainConfig fields of the captioning task, with the value that means "not used"
CAPTION_ONLY = {"tokenizer_path": None, "contrastive_weight": 1.0, "caption_weight": 2.0,
                "zero_shot_templates": None, "freeze": []}


def check_applies(cfg) -> None:
    """ValueError (one line) for a setting that the task of ``cfg`` would not use."""
    if cfg.task != "classify":
        if cfg.classify != ClassifyConfig():
            raise ValueError("classify: applies only with task=classify")
        return
    cfg.classify.check()
    for name, unused in CAPTION_ONLY.items():
        if getattr(cfg, name) != unused:
            hint = {"freeze": "; classify.freeze_backbone=true freezes the ViT",
                    "zero_shot_templates": "; classify.templates are the zero-shot head's"}.get(name, "")
            raise ValueError(f"{name}: a captioning setting, it cannot apply with task=classify{hint}")
    d = cfg.data
    if d.kind not in ("shapes", "hf"):
        raise ValueError(f"data.kind={d.kind}: task=classify reads a class-per-folder directory, a CSV or "
                         f"hf:SPEC (data.kind=hf) in data.root")
    if d.streaming:
        raise ValueError("data.streaming: cannot apply with task=classify (the labelled set is indexed)")
    if d.train_split != "train" or d.val_split not in ("val", None) or d.karpathy_json:
        raise ValueError("data.train_split/val_split/karpathy_json: cannot apply with task=classify; "
                         "data.root and data.val_root are the sets (hf:SPEC@SPLIT names a split)")
    if cfg.classify.head_init in ("zero_shot", "probe") and not cfg.init_from:
        raise ValueError(f"classify.head_init={cfg.classify.head_init}: needs init_from (a trained backbone)")
    if cfg.classify.head_init == "probe" and not d.val_root:
        raise ValueError("classify.head_init=probe: needs data.val_root (the probe's weight decay is chosen on it)")
