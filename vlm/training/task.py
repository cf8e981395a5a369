"""What a training run trains: the one loop (``vlm.training.loop``) asks a ``Task`` for everything
that is not the loop itself.

A task builds the model and the datasets from the config, turns a batch into named loss parts,
evaluates, and exports what ``vlm`` loads afterwards. The loop owns the Accelerator, the
optimizer and schedule, accumulation, resume, logging and checkpoints. Two tasks exist:

- ``caption``: CoCa's contrastive + captioning objective (``vlm.training.caption_task``);
- ``classify``: a ViT with a classification head (``vlm.classify.task``).

``TrainConfig.task`` names the task; ``make_task(cfg)`` builds it.

    class MyTask(Task):
        def setup(self, accelerator, out): ...            # -> Setup(model, train_set, val_set, collate)
        def loss(self, model, batch): ...                 # -> {"total": tensor, "part": tensor, ...}
        def export(self, accelerator, model, directory, dtype=None): ...
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

TASKS = {  # TrainConfig.task -> "module:class"
    "caption": "vlm.training.caption_task:CaptionTask",
    "classify": "vlm.classify.task:ClassifyTask",
}


@dataclass
class Setup:
    """What a task hands the loop: the model and its data (plain datasets; the loop builds loaders)."""

    model: nn.Module
    train_set: Any  # a map-style Dataset or an IterableDataset (a stream)
    val_set: Optional[Any]  # None: no validation
    collate: Callable  # items -> batch dict with "batch_size" (items kept) and "num_skipped"
    param_groups: Optional[list[dict]] = None  # optimizer groups (e.g. layer-wise lr decay); None: the default two


class Task:
    """The task-specific part of training. Subclasses override ``setup``, ``loss`` and ``export``;
    the rest has defaults that fit any task."""

    name = "task"

    def __init__(self, cfg):
        self.cfg = cfg

    def setup(self, accelerator, out: Path) -> Setup:
        """Build the model and datasets (called once, on every process, before ``prepare``)."""
        raise NotImplementedError

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Named scalar loss parts of one batch; ``total`` is what is backpropagated."""
        raise NotImplementedError

    def export(self, accelerator, model, directory: Path, dtype: Optional[torch.dtype] = None) -> None:
        """Write what users load (every process calls it; the main one writes)."""
        raise NotImplementedError

    def after_step(self, model) -> None:
        """Called after every optimizer step (e.g. to clamp a temperature)."""

    def set_epoch(self, epoch: int) -> None:
        """Called when an epoch of the training data starts (e.g. to reseed data augmentation by
        epoch, so that a resumed run crops as the uninterrupted one did)."""

    @torch.no_grad()
    def evaluate(self, accelerator, model, val_loader) -> dict[str, float]:
        """Validation metrics over every process's share of ``val_loader``: the mean loss parts
        by default. Every process calls it."""
        from vlm.training.steps import usable

        model.eval()
        sums, batches = None, 0
        names: list[str] = []
        for batch in val_loader:
            if not usable(accelerator, batch):
                continue
            parts = self.loss(model, batch)
            names = list(parts)
            values = torch.stack([v.detach().float() for v in parts.values()])  # (parts,)
            sums = values if sums is None else sums + values
            batches += 1
        model.train()
        if sums is None:
            return {}
        means = (accelerator.reduce(sums, "mean") / batches).tolist()
        return {f"val/{k}": v for k, v in zip(names, means)}

    def report(self, accelerator, model) -> list[str]:
        """Lines printed after an evaluation on the main process (e.g. sample captions)."""
        return []

    def metadata(self) -> dict:
        """Run facts for the log line at start (e.g. the number of classes)."""
        return {}


def make_task(cfg) -> Task:
    module, cls = TASKS[cfg.task].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
