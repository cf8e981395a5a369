"""Memory limits: refuse image sizes, batch sizes and beam counts that cannot fit, before any work.

A ViT at image size S with patch P runs on ``(S/P)**2 + 1`` tokens per image, so memory grows
with batch x S**2; beam search keeps batch x beams rows, each with the decoder's cached
cross-attention keys/values over the image tokens. ``inference_bytes`` estimates the peak of
one forward from the model config (activations of one block at a time, as inference frees the
rest; attention by fused SDPA kernels, which never hold the tokens x tokens matrix);
``check_fits`` compares it with the memory the device has free and raises ``InvalidOption``.

    >>> check_fits(model.cfg, image_size=64000, batch_size=16, device=torch.device("cpu"))
    InvalidOption: image_size=64000: with 16 images per batch needs about ... of memory, only ... is free; ...
"""

from __future__ import annotations

import os
from typing import Optional

from vlm.errors import InvalidOption

DEFAULT_BATCH_SIZE = 16  # images per forward pass: the API's Pipeline.batch_size and the CLI's --batch-size
MAX_IMAGE_SIZE = 8192  # pixels per side, whatever the memory: position-embedding grids beyond this are nonsense
MAX_BATCH_SIZE = 4096  # images per forward pass
FLOAT_BYTES = 4  # activations are float32 on CPU; a half-precision GPU run needs less, so this errs safe


def image_tokens(model_cfg, image_size: int) -> int:
    """Tokens per image inside the ViT: one per patch, plus the CLS token."""
    grid = image_size // model_cfg.vision.patch_size
    return grid * grid + 1


def inference_bytes(model_cfg, image_size: int, batch_size: int, beams: int = 1) -> int:
    """Estimated peak bytes of encoding ``batch_size`` images (and decoding with ``beams``)."""
    v = model_cfg.vision
    t = image_tokens(model_cfg, image_size)
    pixels = batch_size * 3 * image_size * image_size  # the input tensor, plus one resized copy in PIL
    block = batch_size * t * v.width * (6 + v.mlp_ratio)  # residual, norm, q/k/v, attention out, MLP hidden
    total = pixels * 2 + batch_size * t * v.width + block  # the kept token stream + one block's temporaries
    d = getattr(model_cfg, "decoder", None)
    if d is not None:
        kept = v.attn_pool_queries - 1 if v.pool == "attn" else t  # tokens the decoder cross-attends to
        total += batch_size * beams * kept * d.width * (1 + 2 * d.layers)  # repeated tokens + cached keys/values
    return int(total * FLOAT_BYTES)


def available_bytes(device=None) -> Optional[int]:
    """Free memory on ``device`` (CUDA: what the allocator can get; CPU: MemAvailable), or None if unknown."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_image_size_option(size, patch_size: int) -> int:
    """``size`` if it can be an input size (an int, a positive multiple of ``patch_size``, at most
    ``MAX_IMAGE_SIZE``); else ``InvalidOption`` naming ``image_size``. Memory is ``check_fits``'s."""
    from vlm.model.config import check_image_size

    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidOption("image_size", size, "must be an integer")
    try:
        check_image_size(size, patch_size)
    except ValueError:
        raise InvalidOption("image_size", size, f"must be a positive multiple of the patch size {patch_size}") from None
    if size > MAX_IMAGE_SIZE:
        raise InvalidOption("image_size", size, f"must be at most {MAX_IMAGE_SIZE} pixels")
    return size


def check_batch_size(batch_size: int) -> int:
    """The bounds of a batch size alone (no model needed); returns it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOption("batch_size", batch_size, "must be at least 1")
    if batch_size > MAX_BATCH_SIZE:
        raise InvalidOption("batch_size", batch_size, f"must be at most {MAX_BATCH_SIZE}")
    return batch_size


def check_fits(model_cfg, image_size: int, batch_size: int, beams: int = 1, device=None,
               available: Optional[int] = None) -> None:
    """Raise ``InvalidOption`` (naming the option that scales memory) when a forward cannot fit."""
    check_batch_size(batch_size)
    if image_size > MAX_IMAGE_SIZE:
        raise InvalidOption("image_size", image_size, f"must be at most {MAX_IMAGE_SIZE} pixels")
    need = inference_bytes(model_cfg, image_size, batch_size, beams)
    free = available if available is not None else available_bytes(device)
    if free is None or need <= free:
        return
    where = "GPU memory" if device is not None and getattr(device, "type", "") == "cuda" else "memory"
    cost = f"needs about {_human(need)} of {where}, only {_human(free)} is free"
    if beams > 1 and inference_bytes(model_cfg, image_size, batch_size) <= free:
        raise InvalidOption("beams", beams, f"with {batch_size} images per batch at image size {image_size} "
                                            f"{cost}; use fewer beams or a smaller batch size")
    if inference_bytes(model_cfg, image_size, 1, beams) <= free:
        raise InvalidOption("batch_size", batch_size, f"at image size {image_size} {cost}; "
                                                      f"use a smaller batch size")
    per_batch = f"with {batch_size} images per batch " if batch_size > 1 else ""
    raise InvalidOption("image_size", image_size, f"{per_batch}{cost}; use a smaller image size")
