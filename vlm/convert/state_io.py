"""Reading foreign weight files (open_clip, Hugging Face) without running their code.

Only two loaders are used: safetensors, and ``torch.load(weights_only=True)``,
which refuses pickled code. Every failure (a missing, truncated or foreign file)
becomes a one-line ``CheckpointError`` naming the file and the reason. Sharded
Hugging Face checkpoints (``*.index.json``) are read shard by shard.

    >>> from vlm.convert.state_io import load_state_file
    >>> state = load_state_file("open_clip_pytorch_model.bin")   # {name: tensor}
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from vlm.errors import CheckpointError


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's original CLIP .pt files) hold code, not just tensors."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/code/__torch__.py") or "/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_file(path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors, .bin/.pt/.pth file or a sharded ``*.index.json``.

    A ``{"state_dict": ...}`` wrapper and DistributedDataParallel's ``module.``
    prefix are removed, as open_clip does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted download?)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt ({_first_line(e)})") \
                from None
    else:
        if _is_torchscript(path):
            raise CheckpointError(f"{path}: a TorchScript archive (OpenAI's original release), which vlm does not "
                                  f"unpickle; use the open_clip / timm copy of these weights instead "
                                  f"(e.g. tag 'openai' downloads timm/vit_base_patch32_clip_224.openai)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
            reason = _first_line(e)
            if "central directory" in reason or isinstance(e, EOFError) or "failed finding" in reason:
                reason = f"truncated or corrupt ({reason})"
            elif "weights only" in reason.lower() or "weights_only" in reason or "Unsupported global" in reason:
                reason = "it contains pickled objects other than tensors, refused for safety"
            raise CheckpointError(f"{path}: unreadable checkpoint: {reason}") from None
    return _unwrap(state, path)


def _unwrap(state, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a state dict of tensors ({bad[0]!r} is a {type(state[bad[0]]).__name__})")
    return state


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({_first_line(e)})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_state_file(index.parent / shard))
    return state
