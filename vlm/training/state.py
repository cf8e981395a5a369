"""Where a run stands (``TrainState``) and the checkpoints that save it.

Each checkpoint is ``OUTPUT/checkpoints/step_NNNNNNN/`` holding Accelerate's state
(model, optimizer, scheduler, RNG and sampler states), ``trainer_state.json``
(``TrainState``: the step and the position in the data) and ``export/``: what
``vlm.load`` (or ``vlm classify``) loads, written by the task with the weights
gathered by ``accelerator.get_state_dict`` (so it works under FSDP too).

Checkpoints are atomic: every process writes into ``step_NNNNNNN.partial``, which is
fsynced and renamed into place once complete; a run killed half-way leaves a
``.partial`` directory that the next start removes. The last ``keep`` are kept.

    save_checkpoint(accelerator, out, state, keep=2, export=lambda d: task.export(accelerator, model, d))
    path = find_resume(out, "latest")  # or a checkpoint dir
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vlm.io import configio
from vlm.io.atomic import commit_directory, partial_path, prune_partial, write_atomic

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """What a resume needs beside Accelerate's state: optimizer steps done and where the data stands."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being read
    batches: int = 0  # batches of that epoch consumed, skipped ones included
    micro: int = 0  # micro-batches into the current gradient accumulation (0 at every checkpoint)

    def save(self, path: Path) -> None:
        write_atomic(Path(path) / STATE_FILE, json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def load(cls, path: Path, batches_per_step: int, batches_per_epoch: Optional[int]) -> "TrainState":
        """A checkpoint's state. Checkpoints written before the position was stored hold only
        ``step``: full batches and no epoch-end remainder are assumed (``batches_per_epoch``
        None: a stream of unknown length, read as one long epoch)."""
        file = Path(path) / STATE_FILE
        raw = json.loads(file.read_text())
        state = configio.from_dict(cls, raw, str(file))
        if "batches" in raw:
            return state
        if batches_per_epoch is None:
            return cls(step=state.step, batches=state.step * batches_per_step)
        epoch, steps_done = divmod(state.step, max(1, batches_per_epoch // batches_per_step))
        return cls(step=state.step, epoch=epoch, batches=steps_done * batches_per_step)


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (with trainer_state.json) under ``out/checkpoints``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if not p.name.endswith(".partial") and (p / STATE_FILE).is_file())


def prune_incomplete(out: Path) -> list[Path]:
    """Remove what killed writers left: ``*.partial`` dirs, and step dirs without trainer_state.json."""
    root = Path(out) / "checkpoints"
    gone = prune_partial(root) + prune_partial(out)
    if root.is_dir():
        for p in sorted(root.glob("step_*")):
            if p.is_dir() and not (p / STATE_FILE).is_file():
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


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


def save_checkpoint(accelerator, out: Path, state: TrainState, keep: int,
                    export: Callable[[Path], None]) -> Path:
    """Accelerate's state + ``export(dir)`` + trainer_state.json, renamed into place when complete;
    prunes all but the last ``keep``. Every process must call it."""
    path = Path(out) / "checkpoints" / f"step_{state.step:07d}"
    tmp = partial_path(path)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    export(tmp / "export")
    if accelerator.is_main_process:
        state.save(tmp)
        commit_directory(tmp, path)
        for old in checkpoint_dirs(out)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
