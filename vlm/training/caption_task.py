"""The captioning task: CoCa's joint contrastive + captioning objective (Yu et al. 2022).

loss = contrastive_weight * InfoNCE + caption_weight * next-token cross-entropy, one ViT shared
by both heads. A weight of 0 switches a head off: with caption_weight 0 the decoder is not run.
A CLIP (no decoder) trains the contrastive part alone. The export is a ``save_pretrained``
directory that ``vlm.load`` reads; evaluation adds greedy sample captions to the validation loss.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Optional

import torch

from vlm.training.task import Setup, Task


class CaptionTask(Task):
    name = "caption"

    def setup(self, accelerator, out: Path) -> Setup:
        from vlm.data.collate import collate
        from vlm.training.losses import CoCaLoss
        from vlm.training.data import build_datasets, build_tokenizer
        from vlm.training.model_setup import build_model

        cfg = self.cfg
        model, tokenizer = build_model(cfg)
        if tokenizer is None:
            tokenizer = build_tokenizer(cfg, model.cfg, out, accelerator.is_main_process,
                                        accelerator.wait_for_everyone)
        train_set, val_set = build_datasets(cfg, model.cfg, tokenizer)
        self.tokenizer, self.val_set = tokenizer, val_set
        self.caption = getattr(model, "decoder", None) is not None and cfg.caption_weight > 0
        self.loss_fn = CoCaLoss(cfg.contrastive_weight, cfg.caption_weight, cfg.label_smoothing, tokenizer.pad_id)
        return Setup(model, train_set, val_set, collate)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        return self.loss_fn(model(batch["image"], batch["text"], caption=self.caption))

    def after_step(self, model) -> None:
        with torch.no_grad():  # CLIP caps the temperature at 100
            for name, p in model.named_parameters():
                if name.endswith("logit_scale"):
                    p.clamp_(0, math.log(100))

    def _extra(self, accelerator) -> Optional[dict]:
        extra = {"zero_shot_templates": self.cfg.zero_shot_templates} if self.cfg.zero_shot_templates else {}
        if self.caption and accelerator.is_main_process:  # the process that writes the export
            if not hasattr(self, "_words"):
                from vlm.training.data import training_caption_words

                self._words = training_caption_words(self.cfg)
            if self._words is not None:
                extra["caption_words"] = self._words
        return extra or None

    def export(self, accelerator, model, directory: Path, dtype: Optional[torch.dtype] = None) -> None:
        from vlm.training.export import export_pretrained

        export_pretrained(accelerator, model, directory, self.tokenizer, dtype=dtype, extra=self._extra(accelerator))

    def report(self, accelerator, model) -> list[str]:
        """Greedy captions of the first ``eval_captions`` validation images (not under FSDP)."""
        from accelerate.utils import DistributedType

        from vlm.generation.config import GenerationConfig
        from vlm.generation.decode import caption_texts

        n, val_set = self.cfg.eval_captions, self.val_set
        if n <= 0 or val_set is None or accelerator.distributed_type == DistributedType.FSDP:
            return []
        net = accelerator.unwrap_model(model)
        if getattr(net, "decoder", None) is None:
            return []
        # the first n readable items (a stream has no len(); unreadable images are None)
        items = list(itertools.islice((it for it in iter(val_set) if it is not None), n))
        if not items:
            return []
        images = torch.stack([it["image"] for it in items]).to(accelerator.device)
        net.eval()
        with torch.no_grad():
            texts = caption_texts(net, images, self.tokenizer,  # the guards of `vlm caption`
                                  GenerationConfig(max_tokens=net.cfg.decoder.context_length - 1))
        net.train()
        return [f"{text!r} (ref: {it['caption']!r})" for text, it in zip(texts, items)]
