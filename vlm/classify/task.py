"""The classification task of the shared training loop: fine-tune a ViT with a linear head
(the recipe of the ViT paper, Dosovitskiy et al. 2021: cross-entropy with label smoothing,
AdamW, a cosine schedule with warmup, mixed precision, fine-tuning at a higher resolution).

The backbone, the head's input and start, layer-wise lr decay and a frozen backbone are set in
the config's ``classify:`` section (``vlm.classify.train_config``); the data are ``data.root``
and ``data.val_root`` (a class-per-folder directory, a CSV or ``hf:SPEC``), unreadable images
skipped and counted. Evaluation gives val top-1 / top-5 / loss over every process's share; a
head that does not start at chance (zero-shot, probe) is also evaluated before the first step
(``step 0: ...``). The export is a classifier checkpoint that ``vlm classify --model DIR`` uses.

    accelerate launch scripts/train.py --config configs/classify_shapes.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from vlm.training.task import Setup, Task


class ClassifyTask(Task):
    name = "classify"

    def setup(self, accelerator, out: Path) -> Setup:
        from vlm.classify.finetune import layer_decay_groups, start_classifier
        from vlm.data.collate import collate

        cfg, c = self.cfg, self.cfg.classify
        train = _open(cfg.data.root, cfg.data.kind)
        model, labels, pipe = start_classifier(cfg, train.classes)
        self.kept_head = getattr(pipe, "is_classifier", False) and labels == pipe.labels and not c.new_head
        train = train.remap(labels, f"init_from={cfg.init_from}") if labels != train.classes else train
        val = None
        if cfg.data.val_root:
            val = _open(cfg.data.val_root, cfg.data.kind, min_classes=1).remap(labels, f"the training data {cfg.data.root}")
        self.labels, self.start = labels, {}
        self.train_set = train.with_transform(_transform(model.cfg))
        if c.random_crop is not None:
            self.train_set = Cropped(train, _transform(model.cfg), cfg.seed, c.random_crop)
        self.val_full = val.with_transform(_transform(model.cfg)) if val else None
        self.val_set = _subset(self.val_full, cfg.data.val_images) if val else None
        if not cfg.resume:  # a resumed run takes every weight from its checkpoint
            self._init_head(model, pipe)
        if c.freeze_backbone:
            model.visual.requires_grad_(False)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        trained_head = c.head_init != "zero" or self.kept_head  # not at chance: evaluated before step 1
        if self.val_set is not None and trained_head and not cfg.resume and accelerator.is_main_process:
            self.start = _accuracy(model, _loader(self.val_set, cfg.data.batch_size), cfg.label_smoothing)
            accelerator.print("step 0: " + ", ".join(f"{k}={v:.6g}" for k, v in self.start.items()))
        groups = None if c.layer_decay == 1 else layer_decay_groups(model, cfg.weight_decay, c.layer_decay)
        self.model_cfg = model.cfg
        return Setup(model.train(), self.train_set, self.val_set, collate, groups)

    def _init_head(self, model, pipe) -> None:
        c = self.cfg.classify
        if c.head_init == "zero_shot":
            from vlm.classify.zeroshot import zero_shot_head

            zero_shot_head(model, pipe, templates=c.templates)
        elif c.head_init == "probe":  # LP-FT: a converged linear probe first (Kumar et al. 2022)
            from vlm.classify.probe import embed, linear_probe

            pre = _transform(model.cfg).keywords["cfg"]
            fit = linear_probe(embed(model, pre, self.train_set), embed(model, pre, self.val_full), len(self.labels))
            model.set_head(fit.weight, fit.bias)
            model.train()

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.train_set, Cropped):
            self.train_set.epoch = epoch

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).logits.float()  # (B, C)
        target = torch.as_tensor(batch["label"], device=logits.device)  # (B,)
        ce = F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)
        top1 = (logits.argmax(dim=1) == target).float().mean()
        return {"total": ce, "top1": top1}

    @torch.no_grad()
    def evaluate(self, accelerator, model, val_loader) -> dict[str, float]:
        """val top-1 / top-5 / cross-entropy over every image once: each process's (index, hits, loss)
        rows are gathered and the duplicates of the last uneven batches dropped."""
        model.eval()
        rows = [_rows(model, b, self.cfg.label_smoothing) for b in val_loader if b["batch_size"] > 0]
        model.train()
        mine = torch.cat(rows) if rows else torch.full((0, 4), -1.0, device=accelerator.device)  # (n, 4)
        if accelerator.num_processes > 1:
            mine = accelerator.gather(accelerator.pad_across_processes(mine.contiguous(), dim=0, pad_index=-1))
        return _summary(mine)

    def export(self, accelerator, model, directory: Path, dtype: Optional[torch.dtype] = None) -> None:
        from vlm.classify.checkpoint import save_classifier
        from vlm.classify.model import ImageClassifier
        from vlm.training.export import gathered_copy

        fresh = gathered_copy(accelerator, model, ImageClassifier)
        if fresh is not None:
            save_classifier(fresh, directory, dtype=dtype)
        accelerator.wait_for_everyone()

    def metadata(self) -> dict:
        c = self.cfg.classify
        facts = {"classes": len(self.labels), "images": len(self.train_set),
                 "backbone": self.cfg.init_from or self.cfg.model or "tiny",
                 "image size": self.model_cfg.vision.image_size, "head": f"{'init_from' if self.kept_head and c.head_init == 'zero' else c.head_init} on {self.model_cfg.feature}"}
        if c.freeze_backbone:
            facts["backbone"] += " (frozen)"
        return facts


def _open(spec: str, kind: str, min_classes: int = 2):
    from vlm.classify.data import open_labelled

    if kind == "hf" and not spec.startswith("hf:"):
        spec = f"hf:{spec}"
    return open_labelled(spec, min_classes=min_classes)


def _transform(model_cfg):
    import functools

    from vlm.io.images import PreprocessConfig, preprocess

    return functools.partial(preprocess, cfg=PreprocessConfig.for_model(model_cfg))


class Cropped(torch.utils.data.Dataset):
    """Training items under a random-resized crop (Inception-style: area share in [scale, 1], aspect 3/4-4/3),
    then the eval transform. Each crop depends only on (seed, epoch, index), not on a global
    RNG that the loader's prefetching runs ahead of: a resumed run crops as the uninterrupted one."""

    def __init__(self, images, transform, seed: int, scale: float):
        self.images, self.transform, self.seed, self.scale, self.epoch = images, transform, seed, scale, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import math
        import random

        item = self.images[i]  # PIL image (no transform), or None when unreadable
        if item is None:
            return None
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        image = item["image"]
        w, h = image.size
        for _ in range(10):
            area = w * h * rng.uniform(self.scale, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                image = image.crop((x, y, x + cw, y + ch))
                break
        return {**item, "image": self.transform(image)}


def _subset(ds, n: int):
    """At most ``n`` items spread evenly over ``ds`` (class folders are sorted by class)."""
    if n <= 0 or len(ds) <= n:
        return ds
    step = len(ds) / n
    return torch.utils.data.Subset(ds, [int(i * step) for i in range(n)])


def _loader(ds, batch_size: int):
    from vlm.data.collate import collate

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _rows(model, batch: dict, smoothing: float) -> torch.Tensor:
    """(B, 4): dataset index, top-1 hit, top-5 hit, cross-entropy of each image."""
    logits = model(batch["image"]).logits.float()  # (B, C)
    target = torch.as_tensor(batch["label"], device=logits.device)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    index = torch.as_tensor(batch["index"], device=logits.device).float()
    return torch.stack([index, (top5[:, 0] == target).float(), (top5 == target[:, None]).any(1).float(), ce], 1)


def _summary(rows: torch.Tensor) -> dict[str, float]:
    rows = rows[rows[:, 0] >= 0].cpu()
    first: dict[int, int] = {}
    for i, k in enumerate(rows[:, 0].long().tolist()):  # each image once (padded batches repeat some)
        first.setdefault(k, i)
    if not first:
        return {}
    rows = rows[list(first.values())]
    return {"val/top1": float(rows[:, 1].mean()), "val/top5": float(rows[:, 2].mean()),
            "val/loss": float(rows[:, 3].mean())}


@torch.no_grad()
def _accuracy(model, loader, smoothing: float) -> dict[str, float]:
    was = model.training
    model.eval()
    rows = [_rows(model, b, smoothing) for b in loader if b["batch_size"] > 0]
    model.train(was)
    return _summary(torch.cat(rows)) if rows else {}
