"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and tokenizer files.

``save_pretrained`` / ``load_pretrained`` in the style of Hugging Face's
``save_pretrained`` / ``from_pretrained``. Loading never unpickles: weights come
from safetensors only. Every failure is a ``CheckpointError`` whose message
names the directory and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from vlm.config import ModelConfig
from vlm.errors import CheckpointError, first_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model, directory, tokenizer=None, dtype: Optional[torch.dtype] = None,
                    extra: Optional[dict] = None) -> Path:
    """Write config, weights (optionally cast, e.g. to float16 to halve the size) and tokenizer."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = {"vlm_version": _version(), **model.cfg.to_dict(), **(extra or {})}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "vlm_version": _version()})
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def load_config(directory) -> ModelConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a vlm checkpoint (no {CONFIG_NAME})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from None
    raw.pop("vlm_version", None)
    raw = {k: v for k, v in raw.items() if k in ModelConfig.__dataclass_fields__}
    try:
        return ModelConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None


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
    from vlm.model import create_model

    directory = Path(directory)
    cfg = load_config(directory)
    model = create_model(cfg, init=False)  # every weight comes from the file
    load_weights(model, load_state_dict(directory / WEIGHTS_NAME), directory)
    tokenizer = load_checkpoint_tokenizer(directory, cfg)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def load_checkpoint_tokenizer(directory, cfg: ModelConfig):
    from vlm.tokenizers import load_tokenizer

    try:
        return load_tokenizer(directory)
    except FileNotFoundError:
        if cfg.tokenizer == "clip_bpe":  # a CLIP-vocabulary checkpoint saved without its files
            from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

            return CLIPBPETokenizer(context_length=cfg.text.context_length)
        raise CheckpointError(f"{directory}: no tokenizer files (tokenizer_config.json)") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: unreadable tokenizer ({e})") from None


def _version() -> str:
    from vlm import __version__

    return __version__
