"""The linear probe of CLIP (Radford et al. 2021, sec. 3.2) and CLIP_benchmark: the backbone
is frozen, its features are embedded once, and an L2-regularised logistic regression is
fitted on them with L-BFGS; the weight decay is chosen by a sweep on the validation split.

Features are cached on disk (``cache_dir``; the key hashes the model's files, the head's
input, the preprocessing and the image list), so a second probe of the same data embeds nothing.

    vlm probe --model ckpt/coca --train data/shapes_cls/train --val data/shapes_cls/val --out ckpt/probe
    >>> result = linear_probe(model, preprocess, train_set, val_set)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vlm.classify.metrics import top_k_accuracy
from vlm.data.collate import SkipCounter

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class Features:
    x: Tensor  # (N, D) float32 head inputs of the readable images
    y: Tensor  # (N,) int64 targets
    skipped: int = 0  # images that could not be read
    cached: bool = False  # read from the cache


@dataclass
class ProbeResult:
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    weight_decay: float
    sweep: list = field(default_factory=list)  # [{"weight_decay", "val_top1"}]


def _fingerprint(model, preprocess, dataset, model_id: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_id, "feature": model.cfg.feature, "vision": model.cfg.vision.__dict__,
                         "preprocess": preprocess.to_dict(), "n": len(dataset)}, sort_keys=True, default=str).encode())
    for name, t in model.visual.state_dict().items():  # every backbone weight: a fine-tuned model differs
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    for i in range(len(dataset)):
        s = dataset.source_name(i)
        try:
            st = os.stat(s) if os.path.exists(s) else None
        except OSError:
            st = None
        h.update(f"{s}|{dataset.targets[i]}|{st.st_size if st else ''}|{st.st_mtime_ns if st else ''}\n".encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def embed(model, preprocess, dataset, batch_size: int = 64, cache_dir: Optional[os.PathLike] = None,
          model_id: str = "", progress: Optional[Callable[[int], None]] = None,
          on_skip: Optional[Callable[[str, str], None]] = None) -> Features:
    """Head inputs of every readable image of ``dataset`` (a ``LabelledImages``), cached.
    ``progress``, if given, is called with the number of images of each batch once it is done
    (not at all when the features come from the cache); ``on_skip`` with (path, reason) of each
    image that could not be read (else the first few are logged)."""
    from vlm.io.images import preprocess as prep

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{_fingerprint(model, preprocess, dataset, model_id)}.pt"
        if path.is_file():
            d = torch.load(path, weights_only=True)
            return Features(d["x"], d["y"], int(d["skipped"]), cached=True)
    model.eval()
    device = next(model.parameters()).device
    xs, ys, skips = [], [], SkipCounter(on_skip=on_skip)
    ds = dataset.with_transform(lambda im: prep(im, preprocess))
    ds.skips = skips
    batch, labels, done = [], [], 0
    for i in range(len(ds)):
        item = ds[i]
        if item is not None:
            batch.append(item["image"])
            labels.append(item["label"])
        if batch and (len(batch) == batch_size or i == len(ds) - 1):
            xs.append(model.features(torch.stack(batch).to(device)).float().cpu())
            ys += labels
            batch, labels = [], []
        if progress is not None and (i + 1 - done == batch_size or i == len(ds) - 1):
            progress(i + 1 - done)  # unreadable images count as done
            done = i + 1
    x = torch.cat(xs) if xs else torch.empty(0, model.cfg.feature_dim)
    feats = Features(x, torch.tensor(ys, dtype=torch.long), skips.skipped)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"x": feats.x, "y": feats.y, "skipped": feats.skipped}, tmp)
        os.replace(tmp, path)
    return feats


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int = 300,
                 init: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression: mean cross-entropy + weight_decay/2 * ||W||^2, by L-BFGS."""
    d = x.shape[1]
    w = torch.zeros(num_classes, d, dtype=torch.float64) if init is None else init[0].double().clone()
    b = torch.zeros(num_classes, dtype=torch.float64) if init is None else init[1].double().clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    x64 = x.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x64 @ w.t() + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def linear_probe(train: Features, val: Features, num_classes: int,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS) -> ProbeResult:
    """Sweep the weight decay on ``val`` (best top-1; ties go to the stronger decay), keep that head."""
    best = None
    sweep = []
    warm = None
    for wd in sorted(weight_decays, reverse=True):  # strong to weak: each fit starts from the previous one
        w, b = fit_logistic(train.x, train.y, num_classes, wd, init=warm)
        warm = (w, b)
        acc = top_k_accuracy(val.x @ w.t() + b, val.y, 1)
        sweep.append({"weight_decay": wd, "val_top1": acc})
        if best is None or acc > best[0] + 1e-12:
            best = (acc, wd, w, b)
    sweep.sort(key=lambda r: r["weight_decay"])
    return ProbeResult(weight=best[2], bias=best[3], weight_decay=best[1], sweep=sweep)
