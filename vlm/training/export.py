"""Exporting a model being trained: the full weights gathered from every process (FSDP-safe)
into a fresh model on the CPU, then ``save_pretrained`` (atomic) by the main process.

    export_pretrained(accelerator, model, "runs/x/model", tokenizer, dtype=torch.float16)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch


def gathered_copy(accelerator, model, build: Callable):
    """``build(cfg)`` on the meta device, filled with the gathered weights, or None off the main
    process. Every process must call it (``get_state_dict`` is a collective under FSDP)."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    cfg = accelerator.unwrap_model(model).cfg
    with torch.device("meta"):
        fresh = build(cfg)
    return load_gathered(fresh.to_empty(device="cpu"), state)


def load_gathered(model, state: dict):
    """``model.load_state_dict`` of gathered weights, each reshaped to the model's own shape: under
    FSDP a scalar parameter trains as a 1-element one (``vlm.training.fsdp.vector_scalars_``)."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.detach().cpu().reshape(shapes.get(k, v.shape)) for k, v in state.items()})
    return model


def export_pretrained(accelerator, model, directory: Path, tokenizer=None, dtype: Optional[torch.dtype] = None,
                      extra: Optional[dict] = None) -> None:
    """save_pretrained of the full (gathered) weights; every process must call it."""
    from vlm.io.checkpoint import save_pretrained
    from vlm.model.coca import create_model

    fresh = gathered_copy(accelerator, model, create_model)
    if fresh is not None:
        save_pretrained(fresh, directory, tokenizer, dtype=dtype, extra=extra)
    accelerator.wait_for_everyone()
