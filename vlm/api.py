"""The Python API: ``vlm.load(NAME_OR_DIR)`` returns a ``Pipeline`` that mirrors the CLI.

    >>> import vlm
    >>> p = vlm.load()                       # the default model shipped in the package
    >>> p.caption(["cat.jpg"], beams=3)
    >>> p.classify(["cat.jpg"], ["cat", "dog"], top_k=2)
    >>> p.similarity(["cat.jpg"], ["a cat", "a dog"])

Images may be one path or PIL image, or a list of them; keyword arguments are named like
the flags (``vlm.generation.GenerationConfig`` holds the caption options). Bad images can be
kept out of the way instead of failing the call: ``on_error="return"`` (see ``Pipeline``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from vlm.errors import InvalidOption, ModelError, UsageError
from vlm.io.batches import ImageBatches
from vlm.runtime.limits import DEFAULT_BATCH_SIZE

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
        raise InvalidOption("device", device, "CUDA is not available on this machine")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidOption("device", device, "not a device (use cpu or cuda)") from None


def resolve_checkpoint(name: Optional[str]) -> Path:
    """Map a model name or directory to a checkpoint directory, or raise ModelError."""
    name = name or DEFAULT_MODEL
    if name in shipped_checkpoints():
        return PRETRAINED_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name == DEFAULT_MODEL:
        how = "(train one with scripts/train.py or convert one with `vlm convert`)"
        raise ModelError(f"no default model is installed: give vlm.load() a checkpoint directory {how}",
                         cli=f"no default model is installed: pass --model with a checkpoint directory {how}")
    from vlm.model.config import list_configs

    if name in list_configs():
        raise ModelError(f"{name}: an architecture without trained weights; convert weights into it with "
                         f"`vlm convert` or pass a checkpoint directory")
    raise ModelError(f"{name}: no such model or checkpoint directory (see `vlm models`)")


class Pipeline(ImageBatches):
    """A loaded model with its tokenizer and preprocessing, ready for inference.

    ``images`` may be one path or PIL image, or a list of them (a string is one path, never
    iterated). They are read and run ``batch_size`` at a time. A non-image object raises
    ``TypeError`` before any work; an image that cannot be read raises ``vlm.errors.ImageLoadError``,
    or, with ``on_error="return"``, is reported in place while the other images are still
    processed, as the command line does:

    - ``caption`` and ``classify``: the ``ImageLoadError`` (``.source``, ``.reason``) takes the
      place of that image's result;
    - ``similarity``: that image's row is NaN; ``load_images(images, on_error="return")`` gives the reasons.
    """

    ood_notice = None  # a vlm.trust.ood.OODNotice, set by load() for checkpoints that ship ood.safetensors:
    # each call is one run (one notice counting every image); ``with pipe.ood_run():`` makes several calls one run
    precision = "fp32"  # fp32 | bf16 | int8: set by load() (vlm.runtime.precision)

    def __init__(self, model, tokenizer, preprocess, device: torch.device, name: str = "",
                 templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = DEFAULT_BATCH_SIZE,
                 caption_words: Optional[Sequence[str]] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess
        self.device = device
        self.name = name
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self.caption_words = None if caption_words is None else tuple(caption_words)
        self._lexicon = None

    @property
    def lexicon(self):
        """The ``vlm.generation.lexicon.Lexicon`` of the checkpoint's training words (None without a list):
        captions spell no other word."""
        if self._lexicon is None and self.caption_words is not None and self.tokenizer is not None:
            from vlm.generation.lexicon import Lexicon

            self._lexicon = Lexicon(self.caption_words, self.tokenizer)
        return self._lexicon

    @property
    def input_dtype(self) -> torch.dtype:
        """float32, or bfloat16 for a bf16 model."""
        from vlm.runtime.precision import DTYPES

        return DTYPES.get(self.precision, torch.float32)

    @property
    def can_caption(self) -> bool:
        return getattr(self.model, "decoder", None) is not None

    @property
    def image_size(self) -> int:
        return self.preprocess_cfg.image_size

    def set_image_size(self, size: int) -> None:
        """Take ``size`` x ``size`` inputs from now on: same patches, the position embeddings resized
        bicubically on the fly (the model's own stored size, ``model.cfg``, is left as trained)."""
        from vlm.runtime.limits import check_image_size_option

        check_image_size_option(size, self.model.cfg.vision.patch_size)
        self.preprocess_cfg = dataclasses.replace(self.preprocess_cfg, image_size=size)

    def check_fits(self, batch_size: Optional[int] = None, beams: int = 1) -> None:
        """Raise ``InvalidOption`` when a batch at this image size (and beam count) cannot fit in memory."""
        from vlm.runtime.limits import check_fits

        check_fits(self.model.cfg, self.image_size, self.batch_size if batch_size is None else batch_size,
                   beams, device=self.device)

    # -- encoding ---------------------------------------------------------------------------
    def images_to_tensor(self, images) -> torch.Tensor:
        return self._tensor(self.load_images(images))

    def _tensor(self, pil: list) -> torch.Tensor:
        """(B, 3, S, S) model input of loaded images."""
        from vlm.io.images import preprocess_batch

        return preprocess_batch(pil, self.preprocess_cfg).to(self.device, self.input_dtype)

    def ood_flags(self, x: torch.Tensor) -> list:
        """Per image of ``x``: far from the training data (True/False), counted into the run; None without a profile."""
        return self.ood_notice(self.model, x) if self.ood_notice is not None else [None] * x.shape[0]

    def ood_run(self):
        """A context in which every call is one run: one out-of-distribution notice at its end."""
        import contextlib

        return self.ood_notice.run() if self.ood_notice is not None else contextlib.nullcontext()

    @torch.inference_mode()
    def encode_images(self, images) -> torch.Tensor:
        """(N, E) L2-normalised image embeddings."""
        from vlm.io.images import as_image_list

        rows = []
        with self.ood_run():
            for batch in _chunks(as_image_list(images), self.batch_size):
                x = self.images_to_tensor(batch)
                self.ood_flags(x)
                rows.append(self.model.encode_image(x).float())
        return torch.cat(rows) if rows else torch.empty(0, self.model.cfg.embed_dim, device=self.device)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, E) L2-normalised text embeddings."""
        ids = self.tokenizer(_as_texts(texts), context_length=self.model.cfg.text.context_length)
        return self.model.encode_text(ids.to(self.device)).float()

    # -- tasks ------------------------------------------------------------------------------
    def generation_config(self, config=None, **options):
        """The checked ``GenerationConfig`` for this model: ``config`` (default greedy) with the
        named fields replaced by ``options``; raises before any image is read."""
        from vlm.generation.config import GenerationConfig

        if not self.can_caption:
            raise ModelError(f"{self.name}: this model has no caption decoder (a CLIP model); "
                             f"use classify or similarity")
        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config: expected a vlm.generation.GenerationConfig, got {type(config).__name__}")
        cfg = dataclasses.replace(config, **options) if config is not None else GenerationConfig(**options)
        cfg.validate()
        self.check_fits(beams=cfg.beams)
        return cfg

    def caption(self, images, config=None, *, on_error: str = "raise", **options) -> list:
        """One caption per image: greedy, beam search (``beams`` > 1) or sampling (``top_p`` / ``top_k``).

        ``config`` is a ``vlm.generation.GenerationConfig``; keyword ``options`` set its fields
        (``caption(imgs, beams=3, max_tokens=20)``). Each caption is a ``vlm.trust.results.Caption``
        (a str) whose ``.ood`` says whether the image looks far from the training data."""
        from vlm.generation.decode import caption_texts
        from vlm.trust.results import Caption

        cfg = self.generation_config(config, **options)
        results: list = []
        with self.ood_run():
            for pil, where, results in self._batches(images, on_error):
                if pil:
                    x = self._tensor(pil)
                    texts = caption_texts(self.model, x, self.tokenizer, cfg, lexicon=self.lexicon)
                    for n, text, far in zip(where, texts, self.ood_flags(x)):
                        results[n] = Caption(text, far)
        return results

    def label_embeddings(self, labels: Sequence[str], templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(C, E) prompt-ensemble embeddings: the mean of normalised template embeddings, renormalised.

        Row i is ``labels[i]``: a blank or repeated label is an error (``vlm.classify.prompts``)."""
        from vlm.classify.prompts import check_labels, check_templates

        labels = check_labels(labels)
        templates = check_templates(templates if templates is not None else self.templates)
        words = self.label_words(labels, templates)
        if words is not None:  # one warning naming every label or template word the model never learned
            words.warn(self.name, len(self.caption_words))
        texts = [t.format(label) for label in labels for t in templates]
        emb = self.encode_texts(texts).view(len(labels), len(templates), -1)  # (C, T, E)
        return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)

    def label_words(self, labels: Sequence[str], templates: Optional[Sequence[str]] = None):
        """Which ``labels`` (and template words) lie outside the checkpoint's training words: a
        ``vlm.trust.vocabulary.LabelWords`` (``.unseen``: a flag per label), or None for a model
        that lists no training words (``caption_words``)."""
        from vlm.trust.vocabulary import check_label_words

        return check_label_words(labels, templates if templates is not None else self.templates, self.caption_words)

    @torch.inference_mode()
    def classify(self, images, labels: Sequence[str], templates: Optional[Sequence[str]] = None,
                 top_k: int = 5, label_embeds: Optional[torch.Tensor] = None, *,
                 on_error: str = "raise") -> list:
        """Zero-shot top-k (label, probability) per image, a ``vlm.trust.results.TopLabels`` list with
        ``.ood`` as for ``caption``; labels follow ``vlm.classify.prompts.check_labels``."""
        from vlm.classify.prompts import check_labels
        from vlm.trust.results import TopLabels

        labels = check_labels(labels)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidOption("top_k", top_k, "must be at least 1")
        if label_embeds is None:
            label_embeds = self.label_embeddings(labels, templates)
        elif label_embeds.shape[0] != len(labels):
            raise UsageError(f"label_embeds: {label_embeds.shape[0]} rows for {len(labels)} labels")
        scale = self.model.logit_scale.exp().float()
        results: list = []
        with self.ood_run():
            for pil, where, results in self._batches(images, on_error):
                if not pil:
                    continue
                x = self._tensor(pil)
                img = self.model.encode_image(x).float()
                probs = (scale * img @ label_embeds.t()).softmax(dim=-1)  # (N, C)
                p, idx = probs.topk(min(top_k, len(labels)), dim=-1)
                for n, pr, ix, far in zip(where, p.tolist(), idx.tolist(), self.ood_flags(x)):
                    results[n] = TopLabels([(labels[j], float(q)) for q, j in zip(pr, ix)], far)
        return results

    @torch.no_grad()  # not inference mode: callers use the matrix in their own autograd-tracked arithmetic
    def similarity(self, images, texts: Sequence[str], *, on_error: str = "raise") -> torch.Tensor:
        """(N_images, N_texts) cosine similarities; ``texts`` may be one string (one column)."""
        texts = _as_texts(texts)
        if not texts:
            raise UsageError("texts: empty text list: give at least one text")
        text_embeds = self.encode_texts(texts)
        rows = None
        with self.ood_run():
            for pil, where, results in self._batches(images, on_error):
                if rows is None:  # a failed image keeps a NaN row
                    rows = torch.full((len(results), len(texts)), float("nan"), device=self.device)
                if pil:
                    x = self._tensor(pil)
                    self.ood_flags(x)
                    rows[where] = self.model.encode_image(x).float() @ text_embeds.t()
        return rows if rows is not None else torch.empty(0, len(texts), device=self.device)


def _as_texts(texts) -> list[str]:
    """A list of strings; one string is one text (never iterated character by character)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts: expected a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    for n, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{n}]: expected a string, got {type(t).__name__}")
    return texts


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def load(name_or_dir: Optional[str] = None, device: Optional[str] = None, image_size: Optional[int] = None,
         pretrained: Optional[str] = None, batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "fp32") -> Pipeline:
    """Load a shipped model name, a checkpoint directory, or a model of another library converted on
    load, ``open_clip:ARCH`` / ``hf:NAME`` / ``timm:NAME`` (open_clip, transformers and timm are
    dependencies of vlm; their weights come from a local file or cache, or the library's hub);
    None means the default model. A classifier
    (a classifier checkpoint, ``timm:NAME``, a ViTForImageClassification) gives a ``ClassifierPipeline``.

    ``pretrained`` names the weights of an ``open_clip:ARCH`` model (a tag or a checkpoint file;
    the same as ``open_clip:ARCH@TAG``). ``image_size`` and ``batch_size`` are checked against
    the memory of ``device`` here, before any image is read. ``precision`` is ``"fp32"``,
    ``"bf16"`` or ``"int8"`` (``vlm.runtime.precision``; docs/precision.md): checked against the
    device before the weights are read."""
    from vlm.io.checkpoint import CheckpointMeta, load_checkpoint, read_config
    from vlm.io.images import PreprocessConfig
    from vlm.runtime.limits import check_batch_size, check_fits
    from vlm.io.fingerprint import fingerprint
    from vlm.runtime.precision import check_precision, to_precision

    check_batch_size(batch_size)
    if pretrained is not None and not (name_or_dir or "").startswith("open_clip:"):
        raise InvalidOption("pretrained", pretrained, "goes with an open_clip:ARCH model name")
    dev = resolve_device(device)
    check_precision(precision, dev)
    if name_or_dir and name_or_dir.startswith(("open_clip:", "hf:", "timm:")):
        from vlm.convert.remote import load_remote

        model, tokenizer, directory = load_remote(name_or_dir, pretrained=pretrained)
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
    if getattr(model.cfg, "model_type", "") == "classifier":  # a supervised classifier: its own labels
        from vlm.classify.pipeline import ClassifierPipeline

        cpipe = ClassifierPipeline(model, PreprocessConfig.for_model(model.cfg), dev, name=str(name_or_dir),
                                   batch_size=batch_size)
        if image_size is not None:
            cpipe.set_image_size(image_size)
        check_fits(model.cfg, cpipe.image_size, batch_size, device=dev)
        cpipe.fingerprint = None if precision == "fp32" else fingerprint(model)
        cpipe.model = to_precision(model.to(dev).eval(), precision, dev)
        cpipe.precision = precision
        return cpipe
    pre = PreprocessConfig.for_model(model.cfg)
    label = str(name_or_dir or DEFAULT_MODEL) + (f"@{pretrained}" if pretrained is not None else "")
    pipe = Pipeline(model, tokenizer, pre, dev, name=label,
                    templates=meta.zero_shot_templates or DEFAULT_TEMPLATES, batch_size=batch_size,
                    caption_words=meta.caption_words)
    if image_size is not None:
        pipe.set_image_size(image_size)
    check_fits(model.cfg, pipe.image_size, batch_size, device=dev)  # before the weights move to the device
    pipe.fingerprint = None if precision == "fp32" else fingerprint(model)  # of the float32 weights (vlm.index)
    pipe.model = to_precision(model.to(dev).eval(), precision, dev)
    pipe.precision = precision
    if directory:
        from vlm.trust.ood import OODCheck, OODNotice

        check = OODCheck.for_checkpoint(directory)
        pipe.ood_notice = OODNotice(check, pipe.name) if check is not None else None
    return pipe
