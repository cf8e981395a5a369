"""Checkpoints during training: ``accelerator.save_state`` dirs, resume lookup, and exports.

Each checkpoint is ``OUTPUT/checkpoints/step_NNNNNNN/`` holding Accelerate's state
(model, optimizer, scheduler, RNG and sampler states), ``trainer_state.json``
(the step and the position in the data: epoch and batches consumed), and ``export/``: a ``save_pretrained`` directory loadable by
``vlm.load`` (weights gathered with ``accelerator.get_state_dict``, so it works
under FSDP too). The last ``keep`` checkpoints are kept.

    save_checkpoint(accelerator, model, tokenizer, out, step, keep=2, extra={...})
    path = find_resume(out, "latest")  # or a checkpoint dir
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

STATE_FILE = "trainer_state.json"


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json) under ``out/checkpoints``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())


def find_resume(out: Path, resume: str) -> Path:
    if resume == "latest":
        found = checkpoint_dirs(out)
        if not found:
            raise FileNotFoundError(f"resume=latest: no checkpoint under {Path(out) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume={resume}: not a training checkpoint (no {STATE_FILE})")
    return path


def read_position(path: Path, batches_per_step: int, batches_per_epoch: Optional[int]) -> tuple[int, int, int]:
    """(step, epoch, batches of that epoch consumed) of a checkpoint. Checkpoints written
    before the position was stored assume full batches and no epoch-end remainder
    (``batches_per_epoch`` None: a stream of unknown length, read as one long epoch)."""
    state = json.loads((Path(path) / STATE_FILE).read_text())
    step = int(state["step"])
    if "epoch" in state and "batches" in state:
        return step, int(state["epoch"]), int(state["batches"])
    if batches_per_epoch is None:
        return step, 0, step * batches_per_step
    epoch, steps_done = divmod(step, max(1, batches_per_epoch // batches_per_step))
    return step, epoch, steps_done * batches_per_step


def export_model(accelerator, model, tokenizer, directory: Path, dtype: Optional[torch.dtype] = None,
                 extra: Optional[dict] = None) -> None:
    """save_pretrained of the full (gathered) weights; every process must call it."""
    from vlm.checkpoint import save_pretrained
    from vlm.model import create_model

    state = accelerator.get_state_dict(model)  # collective under FSDP
    if accelerator.is_main_process:
        cfg = accelerator.unwrap_model(model).cfg
        with torch.device("meta"):
            fresh = create_model(cfg)
        fresh = fresh.to_empty(device="cpu")
        fresh.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
        save_pretrained(fresh, directory, tokenizer, dtype=dtype, extra=extra)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator, model, tokenizer, out: Path, step: int, keep: int = 2,
                    extra: Optional[dict] = None, position: Optional[dict] = None) -> Path:
    """Accelerate state + trainer_state.json + an export; prunes all but the last ``keep``.

    ``position`` ({"epoch": E, "batches": B}) is where the data stands: B batches of
    epoch E consumed, skipped ones included, so a resume continues at the next batch."""
    path = Path(out) / "checkpoints" / f"step_{step:07d}"
    accelerator.save_state(str(path))
    export_model(accelerator, model, tokenizer, path / "export", extra=extra)
    if accelerator.is_main_process:
        state = {"step": step, **(position or {})}
        (path / STATE_FILE).write_text(json.dumps(state) + "\n")  # written last: marks complete
        for old in checkpoint_dirs(out)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
