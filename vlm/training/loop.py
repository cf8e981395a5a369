"""The training loop: one loop for every task (captioning/contrastive, classification) on Accelerate.

``setup`` (``vlm.training.setup``) builds the run; ``train_step`` and ``after_step``
(``vlm.training.steps``) are one micro-batch and one optimizer step's bookkeeping; the task
(``vlm.training.task``) supplies the model, the loss, the data and the export. Everything
device- and process-related is Accelerate's: ``prepare``, ``accumulate``, ``backward``,
``clip_grad_norm_``, ``save_state``/``load_state``, ``skip_first_batches`` for exact resume,
``get_state_dict`` for FSDP-safe exports, and ``log`` to TensorBoard. A non-finite loss stops
the run.

    from vlm.training import load_train_config, train
    train(load_train_config("configs/micro.yaml", ["steps=50"]))
"""

from __future__ import annotations

import torch

from vlm.errors import UsageError
from vlm.training.steps import NonFiniteLossError, StepLosses, after_step, stopping, train_step, usable

__all__ = ["NonFiniteLossError", "train"]


def train(cfg) -> dict:
    """Run the configured training; returns a summary dict (final step, losses, export dir)."""
    from vlm.data.collate import SkipCounter
    from vlm.runtime.progress import progress_bar
    from vlm.training.setup import setup

    run = setup(cfg)
    acc, state = run.accelerator, run.state
    skips, history = SkipCounter(), []
    bar = progress_bar("train", total=cfg.steps, initial=state.step) if acc.is_local_main_process else None
    run.model.train()
    try:
        while state.step < cfg.steps and not stopping(run):
            run.train_loader.set_epoch(state.epoch)  # seeded shuffle: seed + epoch
            run.task.set_epoch(state.epoch)  # e.g. reseeds a task's data augmentation
            loader = acc.skip_first_batches(run.train_loader, state.batches) if state.batches else run.train_loader
            trained, resumed_mid_epoch = 0, state.batches > 0
            losses = StepLosses()
            for batch in loader:
                state.batches += 1
                skips.update(batch)
                if not usable(acc, batch):  # (nearly) every image of a batch was unreadable
                    continue
                trained += 1
                record = train_step(run, batch, losses)
                if record is not None:
                    history.append(after_step(run, bar, record)["total"])
                    losses = StepLosses()
                    if state.step >= cfg.steps or stopping(run):
                        break
            else:
                if trained == 0 and not resumed_mid_epoch:  # a whole epoch without one batch to train on
                    raise UsageError(f"data.root={cfg.data.root}: no usable batch in a whole epoch "
                                     f"({skips.summary()})")
                state.epoch, state.batches = state.epoch + 1, 0
    finally:
        if bar is not None:
            bar.close()
    finished = state.step >= cfg.steps
    export = run.out / "model"
    if finished:
        dtype = getattr(torch, cfg.export_dtype)
        run.task.export(acc, run.model, export, dtype=None if dtype == torch.float32 else dtype)
    skips = _all_skips(acc, skips)
    acc.print(f"data: {skips.summary()}")
    acc.print(f"{'finished' if finished else 'stopped'} at step {state.step}"
              + (f"; model saved to {export}" if finished else ""))
    acc.end_training()
    return {"step": state.step, "finished": finished, "export": str(export) if finished else None,
            "losses": history, "skipped": skips.skipped}


def _all_skips(acc, skips):
    """Every process's skips, not only the main one's."""
    from vlm.data.collate import SkipCounter

    if acc.num_processes == 1:
        return skips
    seen, skipped = acc.reduce(torch.tensor([skips.seen, skips.skipped], device=acc.device), "sum").tolist()
    return SkipCounter(seen=int(seen), skipped=int(skipped))
