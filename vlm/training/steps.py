"""The pieces of one training step, in the spirit of Accelerate's examples and nanoGPT.

- ``usable``: whether every process trains on a batch (a skip decision: the only collective a
  micro-batch may need);
- ``train_step``: forward, backward and (at the end of an accumulation) clip and step, under
  ``accelerator.accumulate``. The loss parts stay on the device until the optimizer step, where
  one reduce of the accumulated parts gives the step's record (the only host sync of a step)
  and the non-finite guard;
- ``after_step``: log, evaluate and checkpoint as the config's intervals say.
"""

from __future__ import annotations

from typing import Optional

import torch

from vlm.errors import VlmError


class NonFiniteLossError(VlmError):
    """The loss became NaN or infinite; the message names the step."""


def usable(accelerator, batch: dict) -> bool:
    """Whether every process trains on this batch: all of them skip it together when one
    process lost (nearly) all its images, so none waits in a collective the others skip."""
    if accelerator.num_processes == 1:
        return batch["batch_size"] >= 2
    sizes = accelerator.gather(torch.tensor([batch["batch_size"]], device=accelerator.device))  # (world,)
    return int(sizes.min()) >= 1 and int(sizes.sum()) >= 2


class StepLosses:
    """Loss parts summed over the micro-batches of one optimizer step, on the device."""

    def __init__(self):
        self.names: list[str] = []
        self.sums: Optional[torch.Tensor] = None  # (parts,)
        self.micro = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in parts.values()])  # (parts,)
        self.names = list(parts)
        self.sums = values if self.sums is None else self.sums + values
        self.micro += 1

    def reduce(self, accelerator) -> dict[str, float]:
        """Mean over micro-batches and processes: one collective and one host sync."""
        means = (accelerator.reduce(self.sums, "mean") / self.micro).tolist()
        return dict(zip(self.names, means))


def train_step(run, batch: dict, losses: StepLosses) -> Optional[dict]:
    """One micro-batch; the step's record (mean loss parts and the learning rate) when it ended
    an accumulation and an optimizer step was taken, else None.

    The non-finite guard runs once per optimizer step, before the update: the step's summed
    loss parts are reduced across processes, so every process stops at the same step."""
    acc, cfg = run.accelerator, run.cfg
    record = None
    with acc.accumulate(run.model):
        parts = run.task.loss(run.model, batch)
        if cfg.debug_nan_at_step == run.state.step + 1:
            parts = {**parts, "total": parts["total"] * float("nan")}
        losses.add(parts)
        acc.backward(parts["total"])
        if acc.sync_gradients:
            record = losses.reduce(acc)
            if not all(map(_finite, record.values())):
                detail = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "total")
                raise NonFiniteLossError(f"non-finite loss at step {run.state.step + 1}: "
                                         f"total={record['total']} ({detail}); lower lr or check the data")
            if cfg.clip_grad_norm:
                acc.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_norm)
        lr = run.scheduler.get_last_lr()[0]  # the rate this step trains with
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return None if record is None else {**record, "lr": lr}


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def after_step(run, bar, record: dict) -> dict:
    """Bookkeeping of a finished optimizer step: the log line, evaluation and checkpoint.
    Returns the step's record with its step number."""
    from vlm.training.state import save_checkpoint

    acc, cfg, state = run.accelerator, run.cfg, run.state
    run.task.after_step(run.model)
    state.step += 1
    record = {"step": state.step, **record}
    if bar is not None:  # a progress bar on a terminal only (vlm.runtime.progress)
        bar.update(1)
    if run.log is not None:
        run.log.write(record)
    last = state.step == cfg.steps
    if state.step % cfg.log_every == 0 or last:
        acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step)
        if bar is not None:
            bar.set_postfix(loss=f"{record['total']:.4f}", lr=f"{record['lr']:.2e}")
    if run.val_loader is not None and cfg.eval_every and (state.step % cfg.eval_every == 0 or last):
        evaluate(run)
    if (cfg.save_every and state.step % cfg.save_every == 0) or (stopping(run) and not last):
        save_checkpoint(acc, run.out, state, cfg.keep_checkpoints,
                        export=lambda d: run.task.export(acc, run.model, d))
    return record


def evaluate(run) -> dict[str, float]:
    acc = run.accelerator
    metrics = run.task.evaluate(acc, run.model, run.val_loader)
    acc.log(metrics, step=run.state.step)
    lines = run.task.report(acc, run.model) if acc.is_main_process else []
    acc.print(f"step {run.state.step}: " + (", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                                            or "no usable validation batch (unreadable images)"))
    for line in lines:
        acc.print(f"  {line}")
    return metrics


def stopping(run) -> bool:
    """``stop_after`` reached: the run saves a checkpoint and exits early."""
    return run.cfg.stop_after is not None and run.state.step >= run.cfg.stop_after
