"""The Python API: ``vlm.load(NAME_OR_DIR)`` returns a ``Pipeline`` that mirrors the CLI.

    >>> import vlm
    >>> p = vlm.load()                       # the default model shipped in the package
    >>> p.caption(["cat.jpg"], beams=3)
    >>> p.classify(["cat.jpg"], ["cat", "dog"], top_k=2)
    >>> p.similarity(["cat.jpg"], ["a cat", "a dog"])

Images may be paths or PIL images; keyword arguments are named like the flags.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from vlm.errors import ModelError, UsageError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL = "default"
DEFAULT_TEMPLATES = ("a photo of a {}.",)

ImageInput = Union[str, os.PathLike, "PIL.Image.Image"]  # noqa: F821


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints shipped inside the package (``vlm/pretrained/NAME``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_device(device: Optional[str]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device (use cpu or cuda)") from None


def resolve_checkpoint(name: Optional[str]) -> Path:
    """Map a model name or directory to a checkpoint directory, or raise ModelError."""
    name = name or DEFAULT_MODEL
    if name in shipped_checkpoints():
        return PRETRAINED_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name == DEFAULT_MODEL:
        raise ModelError("no default model is installed: pass --model with a checkpoint directory "
                         "(train one with scripts/train.py or convert one with `vlm convert`)")
    from vlm.config import list_configs

    if name in list_configs():
        raise ModelError(f"{name}: an architecture without trained weights; convert weights into it with "
                         f"`vlm convert` or pass a checkpoint directory")
    raise ModelError(f"{name}: no such model or checkpoint directory (see `vlm models`)")


class Pipeline:
    """A loaded model with its tokenizer and preprocessing, ready for inference."""

    def __init__(self, model, tokenizer, preprocess, device: torch.device, name: str = "",
                 templates: Sequence[str] = DEFAULT_TEMPLATES):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess
        self.device = device
        self.name = name
        self.templates = tuple(templates)

    @property
    def can_caption(self) -> bool:
        return getattr(self.model, "decoder", None) is not None

    @property
    def image_size(self) -> int:
        return self.preprocess_cfg.image_size

    def set_image_size(self, size: int) -> None:
        """Take ``size`` x ``size`` inputs from now on: same patches, the position embeddings resized
        bicubically on the fly (the model's own stored size, ``model.cfg``, is left as trained)."""
        from vlm.config import check_image_size

        patch = self.model.cfg.vision.patch_size
        try:
            check_image_size(size, patch)
        except ValueError:
            raise UsageError(f"--image-size {size}: must be a positive multiple of the patch size {patch}") from None
        self.preprocess_cfg = dataclasses.replace(self.preprocess_cfg, image_size=size)

    # -- encoding ---------------------------------------------------------------------------
    def images_to_tensor(self, images: Sequence[ImageInput]) -> torch.Tensor:
        from vlm.images import load_image, preprocess_batch

        pil = [load_image(im) for im in images]
        return preprocess_batch(pil, self.preprocess_cfg).to(self.device)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(N, E) L2-normalised image embeddings."""
        return self.model.encode_image(self.images_to_tensor(images)).float()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, E) L2-normalised text embeddings."""
        ids = self.tokenizer(list(texts), context_length=self.model.cfg.text.context_length)
        return self.model.encode_text(ids.to(self.device)).float()

    # -- tasks ------------------------------------------------------------------------------
    def generation_config(self, beams: int = 1, max_tokens: int = 30, min_tokens: int = 0,
                          top_p: Optional[float] = None, top_k: Optional[int] = None, temperature: float = 1.0,
                          repetition_penalty: float = 1.0, seed: Optional[int] = None):
        """Check that this model can caption and the options make sense, before any image is read."""
        from vlm.generation import GenerationConfig

        if not self.can_caption:
            raise ModelError(f"{self.name}: this model has no caption decoder (a CLIP model); "
                             f"use classify or similarity")
        cfg = GenerationConfig(max_tokens=max_tokens, min_tokens=min_tokens, beams=beams, top_p=top_p,
                               top_k=top_k, temperature=temperature, repetition_penalty=repetition_penalty,
                               seed=seed)
        try:
            cfg.validate()
        except ValueError as e:
            raise UsageError(str(e)) from None
        return cfg

    def caption(self, images: Sequence[ImageInput], beams: int = 1, max_tokens: int = 30, min_tokens: int = 0,
                top_p: Optional[float] = None, top_k: Optional[int] = None, temperature: float = 1.0,
                repetition_penalty: float = 1.0, seed: Optional[int] = None) -> list[str]:
        """One caption per image: greedy, beam search (beams > 1) or sampling (top_p / top_k)."""
        from vlm.generation import generate

        cfg = self.generation_config(beams, max_tokens, min_tokens, top_p, top_k, temperature,
                                     repetition_penalty, seed)
        tok = self.tokenizer
        ids = generate(self.model, self.images_to_tensor(images), tok.sot_id, tok.eot_id, tok.pad_id, cfg)
        return [tok.decode(row).strip() for row in ids]

    def label_embeddings(self, labels: Sequence[str], templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(C, E) prompt-ensemble embeddings: the mean of normalised template embeddings, renormalised.

        Row i is ``labels[i]``: a blank label is an error, not dropped (that would shift the rows)."""
        labels = [str(label).strip() for label in labels]
        if not labels:
            raise UsageError("empty label list: give at least one label")
        blank = [n for n, label in enumerate(labels) if not label]
        if blank:
            raise UsageError(f"labels: label {blank[0]} of {len(labels)} is blank; every label needs text")
        templates = list(templates or self.templates)
        for t in templates:
            if "{}" not in t:
                raise UsageError(f"--template {t!r}: must contain {{}} where the label goes")
        texts = [t.format(label) for label in labels for t in templates]
        emb = self.encode_texts(texts).view(len(labels), len(templates), -1)  # (C, T, E)
        return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)

    @torch.inference_mode()
    def classify(self, images: Sequence[ImageInput], labels: Sequence[str],
                 templates: Optional[Sequence[str]] = None, top_k: int = 5,
                 label_embeds: Optional[torch.Tensor] = None) -> list[list[tuple[str, float]]]:
        """Zero-shot top-k (label, probability) per image."""
        clean = [str(label).strip() for label in labels if str(label).strip()]
        if label_embeds is None:
            label_embeds = self.label_embeddings(clean, templates)
        if top_k < 1:
            raise UsageError(f"--top-k {top_k}: must be at least 1")
        img = self.encode_images(images)
        probs = (self.model.logit_scale.exp().float() * img @ label_embeds.t()).softmax(dim=-1)  # (N, C)
        p, idx = probs.topk(min(top_k, len(clean)), dim=-1)
        return [[(clean[j], float(q)) for q, j in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, idx)]

    def similarity(self, images: Sequence[ImageInput], texts: Sequence[str]) -> torch.Tensor:
        """(N_images, N_texts) cosine similarities."""
        if not texts:
            raise UsageError("empty text list: give at least one text")
        return self.encode_images(images) @ self.encode_texts(texts).t()


def load(name_or_dir: Optional[str] = None, device: Optional[str] = None,
         image_size: Optional[int] = None) -> Pipeline:
    """Load a shipped model name, a checkpoint directory, or (with the `convert` extras)
    ``open_clip:ARCH`` / ``hf:NAME`` / ``timm:NAME``; None means the default model. A classifier
    (a classifier checkpoint, ``timm:NAME``, a ViTForImageClassification) gives a ``ClassifierPipeline``."""
    from vlm.checkpoint import CheckpointMeta, load_checkpoint, read_config
    from vlm.images import PreprocessConfig

    dev = resolve_device(device)
    if name_or_dir and name_or_dir.startswith(("open_clip:", "hf:", "timm:")):
        from vlm.convert.remote import load_remote

        model, tokenizer, directory = load_remote(name_or_dir)
        classifier = getattr(model.cfg, "model_type", "") == "classifier"
        meta = read_config(directory)[1] if directory and not classifier else CheckpointMeta()
    else:
        from vlm.classify.checkpoint import is_classifier_dir, load_classifier

        directory = resolve_checkpoint(name_or_dir)
        if is_classifier_dir(directory):
            model, tokenizer, meta = load_classifier(directory), None, CheckpointMeta()
        else:
            ckpt = load_checkpoint(directory)
            model, tokenizer, meta = ckpt.model, ckpt.tokenizer, ckpt.meta
    model = model.to(dev).eval()
    if getattr(model.cfg, "model_type", "") == "classifier":  # a supervised classifier: its own labels
        from vlm.classify.pipeline import ClassifierPipeline

        cpipe = ClassifierPipeline(model, PreprocessConfig.for_model(model.cfg), dev, name=str(name_or_dir))
        if image_size is not None:
            cpipe.set_image_size(image_size)
        return cpipe
    pre = PreprocessConfig.for_model(model.cfg)
    pipe = Pipeline(model, tokenizer, pre, dev, name=str(name_or_dir or DEFAULT_MODEL),
                    templates=meta.zero_shot_templates or DEFAULT_TEMPLATES)
    if image_size is not None:
        pipe.set_image_size(image_size)
    return pipe
