"""AdamW parameter groups and the cosine-with-warmup learning-rate schedule.

One weight-decay rule (as in CLIP/CoCa training, Radford et al. 2021; Yu et al.
2022): the weight matrices of Linear and Conv layers (ndim >= 2) decay; norms,
biases, embeddings (token_embed, pos_embed, cls_token, the attentional pooler's
query) and logit_scale do not. The schedule rises linearly for ``warmup``
steps, then follows a half cosine down to ``min_ratio`` of the peak
(Loshchilov & Hutter 2017).

    optimizer = build_optimizer(model, cfg); scheduler = build_scheduler(optimizer, cfg, processes)
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("token_embed", "pos_embed", "cls_token", "query", "logit_scale")


def decays(name: str, param: torch.Tensor) -> bool:
    """True for weight matrices (ndim >= 2) that are not embeddings."""
    return param.ndim >= 2 and not any(part in NO_DECAY_NAMES for part in name.split("."))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices and the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg, groups: list[dict] | None = None,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups`` (a task's own, e.g. layer-wise learning-rate decay; a group's
    ``lr_scale`` multiplies ``cfg.lr``) or the two default weight-decay groups. ``fused``: PyTorch's
    one-kernel AdamW (on one H200, coca_ViT-B-32's step took 16 ms of a 140 ms training step with
    the default multi-tensor AdamW; BENCHMARKS.md, "The GPU check")."""
    groups = param_groups(model, cfg.weight_decay) if groups is None else groups
    groups = [{**g, "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg, num_processes: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over optimizer steps. Accelerate's prepared scheduler steps
    ``num_processes`` times per optimizer step, so its count is divided back: every
    process count gives the learning rates of one process, step for step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s // num_processes, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
