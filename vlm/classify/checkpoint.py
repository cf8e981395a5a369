"""Classifier checkpoints: ``config.json`` (``"model_type": "classifier"``, the ViT, the head's
input, the label names, the preprocessing) and ``model.safetensors``, like every vlm checkpoint.

    save_classifier(model, "ckpt/probe")
    model = load_classifier("ckpt/probe")          # eval mode
    is_classifier_dir("ckpt/probe")                # True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from vlm.io import configio
from vlm.io.checkpoint import CHECKPOINT_META_KEYS, CONFIG_NAME, META_KEY, WEIGHTS_NAME, load_state_dict, save_pretrained
from vlm.classify.model import ClassifierConfig, ImageClassifier
from vlm.errors import CheckpointError


def read_config_json(directory) -> Optional[dict]:
    """The parsed config.json of a directory, or None when there is none or it is unreadable."""
    path = Path(directory) / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def is_classifier_dir(directory) -> bool:
    raw = read_config_json(directory) if Path(directory).is_dir() else None
    return isinstance(raw, dict) and raw.get("model_type") == "classifier"


def save_classifier(model: ImageClassifier, directory, dtype: Optional[torch.dtype] = None,
                    extra: Optional[dict] = None) -> Path:
    return save_pretrained(model, directory, dtype=dtype, extra=extra)


def load_classifier_config(directory) -> ClassifierConfig:
    path = Path(directory) / CONFIG_NAME
    raw = read_config_json(directory)
    if raw is None:
        raise CheckpointError(f"{directory}: not a vlm checkpoint (no readable {CONFIG_NAME})")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: invalid classifier config (expected a mapping of keys to values)")
    raw = {k: v for k, v in raw.items() if k not in ("vlm_version", META_KEY, *CHECKPOINT_META_KEYS)}
    try:  # the one config loader: unknown keys and wrong types named with the file
        return ClassifierConfig.from_dict(raw, source=str(path))
    except configio.ConfigError as e:
        raise CheckpointError(str(e)) from None


def build_with_weights(cfg: ClassifierConfig, state: dict, source) -> ImageClassifier:
    """Build on the meta device (no random init) and take the tensors as the parameters."""
    with torch.device("meta"):
        model = ImageClassifier(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        detail = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        detail += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"{source}: weights do not match the architecture: {', '.join(detail)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: weights do not match the architecture: {k} has shape "
                                  f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, assign=True)
    return model


def load_classifier(directory, device: Optional[str] = None) -> ImageClassifier:
    directory = Path(directory)
    cfg = load_classifier_config(directory)
    model = build_with_weights(cfg, load_state_dict(directory / WEIGHTS_NAME), directory)
    if device is not None:
        model = model.to(device)
    return model.eval()
