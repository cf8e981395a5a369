"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and tokenizer files.

``save_pretrained`` / ``load_pretrained`` in the style of Hugging Face's
``save_pretrained`` / ``from_pretrained``. Loading never unpickles: weights come
from safetensors only. Every failure is a ``CheckpointError`` whose message
names the directory (or file) and the reason.

``config.json`` holds ``vlm_version``, the ``ModelConfig`` fields and, under
``metadata``, what is about the checkpoint rather than the architecture
(``CheckpointMeta``: zero-shot templates, the source it was converted from, the words of
the training captions).
It is read by the one config loader (``vlm.io.configio``): an unknown key or a
value of the wrong type is refused naming the file and the key. Checkpoints
written before the ``metadata`` key (metadata keys at the top level, e.g. the
shipped default model) are read as well; saving writes the new layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from vlm.io import configio
from vlm.model.config import IGNORED_KEYS, ModelConfig
from vlm.errors import CheckpointError, first_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
META_KEY = "metadata"
CLIP_VOCAB_SIZE = 49408  # CLIP BPE (vlm.tokenizers.clip_bpe), without importing it


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself, beside its architecture (config.json's ``metadata``)."""

    zero_shot_templates: Optional[list[str]] = None  # prompt templates for zero-shot labels, "{}" = label
    converted_from: Optional[str] = None  # the source of converted weights, e.g. "open_clip:ViT-B-32/openai"
    trained_by: Optional[str] = None  # how a classifier head was made, e.g. "vlm probe --model default (wd 0.01)"
    caption_words: Optional[list[str]] = None  # the words of the training captions: decoding spells no other (vlm.generation.lexicon)

    def __post_init__(self) -> None:
        for t in self.zero_shot_templates or ():
            if "{}" not in t:
                raise ValueError(f"zero_shot_templates: {t!r} has no {{}} where the label goes")


CHECKPOINT_META_KEYS = tuple(f.name for f in dataclasses.fields(CheckpointMeta))  # top level in old checkpoints


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its tokenizer and its metadata."""

    model: Any
    tokenizer: Any
    meta: CheckpointMeta


def save_pretrained(model, directory, tokenizer=None, dtype: Optional[torch.dtype] = None,
                    extra: Optional[dict] = None) -> Path:
    """Write config, weights (optionally cast, e.g. to float16 to halve the size) and tokenizer.

    Atomic: the files are written under ``DIR.partial`` and fsynced first. A new directory is
    then renamed into place; into an existing one each file is moved with ``os.replace``,
    ``config.json`` (what makes a directory a checkpoint) last. A crash leaves the old
    checkpoint or the new one, never a half-written mix."""
    from vlm.io.atomic import commit_directory, fsync_tree, partial_path

    out = Path(directory)
    meta = configio.from_dict(CheckpointMeta, dict(extra or {}), "save_pretrained(extra=...)")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    work = partial_path(out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        _write(model, work, tokenizer, dtype, meta)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not out.exists():
        commit_directory(work, out)
        return out
    fsync_tree(work)
    for item in sorted(work.iterdir(), key=lambda p: p.name == CONFIG_NAME):  # config.json last
        dest = out / item.name
        if item.is_dir() and dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    shutil.rmtree(work)
    return out


def _write(model, out: Path, tokenizer, dtype: Optional[torch.dtype], meta: CheckpointMeta) -> None:
    from safetensors.torch import save_file

    config = {"vlm_version": _version(), **model.cfg.to_dict()}
    if tokenizer is not None:  # the record names the tokenizer files written beside it
        config["tokenizer"] = tokenizer.type_name
    meta_dict = {k: v for k, v in configio.to_dict(meta).items() if v is not None}
    if meta_dict:
        config[META_KEY] = meta_dict
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "vlm_version": _version()})
    if tokenizer is not None:
        tokenizer.save(out)


def load_config(directory) -> ModelConfig:
    """The model config of a checkpoint directory (``CheckpointError`` naming config.json and the key)."""
    return read_config(directory)[0]


def read_config(directory) -> tuple[ModelConfig, CheckpointMeta]:
    """(model config, metadata) of a checkpoint directory, old layout or new."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a vlm checkpoint (no {CONFIG_NAME})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: invalid model config (expected a mapping of keys to values)")
    raw.pop("vlm_version", None)
    meta_raw = raw.pop(META_KEY, {})
    if not isinstance(meta_raw, dict):
        raise CheckpointError(f"{path}: {META_KEY}={meta_raw!r}: expected a mapping of keys to values")
    meta_raw = dict(meta_raw)
    for name in [f.name for f in dataclasses.fields(CheckpointMeta)]:  # the layout before "metadata"
        if name in raw:
            meta_raw.setdefault(name, raw.pop(name))
    try:
        cfg = configio.from_dict(ModelConfig, raw, str(path), ignore=IGNORED_KEYS)
        meta = configio.from_dict(CheckpointMeta, meta_raw, str(path), prefix=f"{META_KEY}.")
    except configio.ConfigError as e:
        raise CheckpointError(str(e)) from None
    return cfg, meta


def load_state_dict(path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name} in the checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({first_line(e)})") from None


def load_weights(model, state: dict[str, torch.Tensor], source) -> None:
    """Copy weights into the model after checking names and shapes; cast to the model's dtype."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: weights do not match the architecture: {', '.join(detail)}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{source}: weights do not match the architecture: {k} has shape "
                                  f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_pretrained(directory, device: Optional[str] = None):
    """Load (model, tokenizer) from a checkpoint directory; the model is in eval mode."""
    ckpt = load_checkpoint(directory, device)
    return ckpt.model, ckpt.tokenizer


def load_checkpoint(directory, device: Optional[str] = None) -> Checkpoint:
    """Load model (eval mode), tokenizer and metadata from a checkpoint directory."""
    from vlm.model.coca import create_model

    directory = Path(directory)
    cfg, meta = read_config(directory)
    model = create_model(cfg, init=False)  # every weight comes from the file
    load_weights(model, load_state_dict(directory / WEIGHTS_NAME), directory)
    tokenizer = load_checkpoint_tokenizer(directory, cfg)
    if device is not None:
        model = model.to(device)
    return Checkpoint(model.eval(), tokenizer, meta)


def load_checkpoint_tokenizer(directory, cfg: ModelConfig):
    """The checkpoint's tokenizer: its saved files, or for a CLIP-vocabulary checkpoint saved
    without them (``tokenizer: clip_bpe``) the CLIP BPE merges of the installed open_clip package.

    Every problem is one ``CheckpointError`` naming the missing or bad file; a vocabulary larger
    than the model's embedding table is refused here rather than failing at the first lookup.
    """
    from vlm.tokenizers import CONFIG_NAME as TOKENIZER_CONFIG
    from vlm.tokenizers import load_tokenizer

    directory = Path(directory)
    sizes = [cfg.text.vocab_size] + ([cfg.decoder.vocab_size] if cfg.decoder is not None else [])
    if not (directory / TOKENIZER_CONFIG).is_file():
        if cfg.tokenizer != "clip_bpe":
            raise CheckpointError(f"{directory}: no tokenizer files (no {TOKENIZER_CONFIG}; "
                                  f"{CONFIG_NAME} says tokenizer={cfg.tokenizer})")
        if min(sizes) < CLIP_VOCAB_SIZE:
            raise CheckpointError(f"{directory}: no tokenizer files (no {TOKENIZER_CONFIG}), and the CLIP BPE "
                                  f"vocabulary ({CLIP_VOCAB_SIZE} tokens) does not fit the model's "
                                  f"{min(sizes)} tokens")
        from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

        try:
            return CLIPBPETokenizer(context_length=cfg.text.context_length)
        except FileNotFoundError as e:
            raise CheckpointError(f"{directory}: no tokenizer files (no {TOKENIZER_CONFIG}), and {e}") from None
    try:
        tok = load_tokenizer(directory)
    except FileNotFoundError as e:  # a file tokenizer_config.json names, e.g. spm.model
        raise CheckpointError(first_line(e)) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: unreadable tokenizer ({first_line(e)})") from None
    if tok.vocab_size > min(sizes):
        raise CheckpointError(f"{directory}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                              f"vocabulary of {min(sizes)}")
    return tok


def _version() -> str:
    """The installed vlm's version (the package metadata pip wrote), without importing ``vlm``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vlm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
