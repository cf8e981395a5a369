"""CLIP and CoCa: one ViT shared by a contrastive text tower and (CoCa) a caption decoder.

``CLIP`` (Radford et al. 2021) pairs the image and text towers; matching
image/text pairs get the highest cosine similarity. ``CoCa`` (Yu et al. 2022)
adds a caption decoder cross-attending to the image tokens. ``create_model``
builds either from a ``ModelConfig``, chosen by its ``model_type`` key.

``forward`` returns one typed ``ModelOutput``; the losses live in ``vlm.training.losses``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from vlm.model.config import ModelConfig, get_config
from vlm.model.decoder import CaptionDecoder
from vlm.model.text import TextTransformer
from vlm.model.vit import VisionTransformer


@dataclass
class ModelOutput:
    image_embeds: Tensor  # (B, E) L2-normalised image embeddings
    text_embeds: Optional[Tensor]  # (B, E) L2-normalised text embeddings
    logit_scale: Tensor  # () exp of the learned temperature
    caption_logits: Optional[Tensor] = None  # (B, L-1, V) next-token logits for text[:, :-1]
    caption_labels: Optional[Tensor] = None  # (B, L-1) targets: text[:, 1:]


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.apply(_init_linear)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        pooled = self.visual(images).pooled
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, text: Tensor, normalize: bool = True) -> Tensor:
        pooled = self.text.embed(text)  # runs no trailing padding
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable

    def set_image_size(self, image_size: int) -> None:
        """Take ``image_size`` inputs from now on, for good: the position embeddings are resampled
        (bicubic) and ``self.cfg`` is replaced by a config that says so (what ``save_pretrained``
        writes). The config object the model was built from is left as it was."""
        self.visual.set_image_size(image_size)
        self.cfg = dataclasses.replace(self.cfg, vision=self.visual.cfg)

    def forward(self, images: Tensor, text: Optional[Tensor] = None, caption: bool = False) -> ModelOutput:
        """Embeddings and the temperature; ``caption=True`` is refused (a CLIP has no decoder),
        so that the two model types take the same arguments."""
        if caption:
            raise ValueError("caption=True: a CLIP has no caption decoder")
        return ModelOutput(
            image_embeds=self.encode_image(images),
            text_embeds=self.encode_text(text) if text is not None else None,
            logit_scale=self.logit_scale.exp(),
        )


class CoCa(CLIP):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.decoder = CaptionDecoder(cfg.decoder, self.visual.token_dim)
        self.decoder.apply(_init_linear)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def forward(self, images: Tensor, text: Optional[Tensor] = None, caption: bool = True) -> ModelOutput:
        """Embeddings, the temperature and (``caption``, with ``text``) the decoder's
        teacher-forced next-token logits; ``caption=False`` skips the decoder."""
        vis = self.visual(images)
        image_embeds = F.normalize(vis.pooled, dim=-1)
        if text is None:
            return ModelOutput(image_embeds, None, self.logit_scale.exp())
        txt = self.text(text)
        logits = labels = None
        if caption:
            # Teacher forcing: the decoder reads tokens [0, L-1) and predicts tokens [1, L).
            logits = self.decoder(txt.tokens[:, :-1], vis.tokens)  # (B, L-1, V)
            labels = text[:, 1:]  # (B, L-1)
        return ModelOutput(image_embeds, F.normalize(txt.pooled, dim=-1), self.logit_scale.exp(), logits, labels)


MODEL_TYPES = {"clip": CLIP, "coca": CoCa}


def create_model(cfg: ModelConfig | str, init: bool = True) -> CLIP:
    """Build a model from a config or a named architecture.

    ``init=False`` skips the random initialisation (the weights are garbage until a
    state dict is loaded): building ViT-B/32 goes from seconds to a fraction of one.
    The skip is scoped to this call and this thread (see ``_SkipInit``).
    """
    if isinstance(cfg, str):
        cfg = get_config(cfg)
    if init:
        return MODEL_TYPES[cfg.model_type](cfg)
    with _SkipInit():
        return MODEL_TYPES[cfg.model_type](cfg)


class _SkipInit(TorchFunctionMode):
    """Turns the in-place initialisers into no-ops while a model is built.

    A torch function mode sees every ``torch.nn.init`` call and tensor method on
    the thread that entered it, and nothing else: no class is patched, so models
    built elsewhere in the process (other threads, after the block) initialise as
    usual. Building on the meta device instead imports ``torch._dynamo`` (seconds).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


_INITIALISERS = frozenset({
    nn.init.uniform_, nn.init.normal_, nn.init.trunc_normal_, nn.init.constant_, nn.init.ones_, nn.init.zeros_,
    nn.init.kaiming_uniform_, nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.fill_, torch.Tensor.zero_,
})


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
    elif isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, std=0.02)
