"""The training function: CoCa's joint contrastive + captioning objective on Accelerate.

Follows CoCa (Yu et al. 2022): loss = contrastive_weight * InfoNCE +
caption_weight * next-token cross-entropy, one ViT shared by both heads; a
weight of 0 switches a head off (with caption_weight 0 the decoder is not run).
Everything device- and process-related is Accelerate's: ``prepare``,
``accumulate``, ``backward``, ``clip_grad_norm_``, ``save_state``/``load_state``,
``skip_first_batches`` for exact resume, ``get_state_dict`` for FSDP-safe
exports, and ``log`` to TensorBoard. A non-finite loss stops the run.

    from vlm.training import load_train_config, train
    train(load_train_config("configs/micro.yaml", ["steps=50"]))
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch

from vlm.errors import UsageError, VlmError


class NonFiniteLossError(VlmError):
    """The loss became NaN or infinite; the message names the step."""


def _hparams(cfg) -> dict:
    from vlm.training.config import config_to_dict

    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            elif isinstance(v, (int, float, str, bool)):
                flat[prefix + k] = v
    walk("", config_to_dict(cfg))
    return flat


def _forward(model, batch, loss_fn, caption: Optional[bool]) -> dict:
    """Loss parts of one batch; ``caption`` is None for a CLIP (no decoder to switch)."""
    kwargs = {} if caption is None else {"caption": caption}
    return loss_fn(model(batch["image"], batch["text"], **kwargs))


def usable(accelerator, batch: dict) -> bool:
    """Whether every process trains on this batch: all of them skip it together when one
    process lost (nearly) all its images, so none waits in a collective the others skip."""
    if accelerator.num_processes == 1:
        return batch["batch_size"] >= 2
    sizes = accelerator.gather(torch.tensor([batch["batch_size"]], device=accelerator.device))  # (world,)
    return int(sizes.min()) >= 1 and int(sizes.sum()) >= 2


@torch.no_grad()
def validate(accelerator, model, val_loader, loss_fn, caption: Optional[bool]) -> dict:
    """Mean validation loss parts over every process's share of the validation loader."""
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    for batch in val_loader:
        if not usable(accelerator, batch):
            continue
        parts = _forward(model, batch, loss_fn, caption)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + accelerator.reduce(v.detach().float(), "mean").item()
        batches += 1
    model.train()
    return {f"val/{k}": v / max(batches, 1) for k, v in sums.items()}


def sample_captions(accelerator, model, val_set, tokenizer, n: int) -> list[str]:
    """Greedy captions of the first ``n`` validation images (main process; not under FSDP)."""
    from accelerate.utils import DistributedType

    from vlm.generation import GenerationConfig, generate

    if n <= 0 or val_set is None or accelerator.distributed_type == DistributedType.FSDP:
        return []
    net = accelerator.unwrap_model(model)
    if getattr(net, "decoder", None) is None:
        return []
    items = [val_set[i] for i in range(min(n, len(val_set)))]
    items = [it for it in items if it is not None]
    if not items:
        return []
    images = torch.stack([it["image"] for it in items]).to(accelerator.device)
    net.eval()
    with torch.no_grad():
        ids = generate(net, images, tokenizer.sot_id, tokenizer.eot_id, tokenizer.pad_id,
                       GenerationConfig(max_tokens=net.cfg.decoder.context_length - 1))
    net.train()
    return [f"{tokenizer.decode(row).strip()!r} (ref: {it['caption']!r})" for row, it in zip(ids, items)]


def train(cfg) -> dict:
    """Run the configured training; returns a summary dict (final step, losses, export dir)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from vlm.data.collate import SkipCounter
    from vlm.losses import CoCaLoss
    from vlm.training.data import build_loaders, build_tokenizer
    from vlm.training.model_setup import build_model
    from vlm.training.optim import build_optimizer, build_scheduler
    from vlm.training.state import export_model, find_resume, read_position, save_checkpoint

    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with="tensorboard", project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # dispatch_batches=False: every process reads a stream and keeps its share of the batches
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                  dispatch_batches=False))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:  # torchrun started N copies that would not talk to each other
        raise UsageError(f"WORLD_SIZE={launched}: {launched} processes were launched but Accelerate found no "
                         f"device for distributed training; for CPU processes set ACCELERATE_USE_CPU=1")
    if cfg.num_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir={out}: exists and is not a directory")
    try:  # a bad model name, data path, vocabulary or optimizer setting: one line, exit status 2
        model, tokenizer = build_model(cfg)
        if tokenizer is None:
            tokenizer = build_tokenizer(cfg, model.cfg, out, accelerator.is_main_process,
                                        accelerator.wait_for_everyone)
        train_loader, val_loader, val_set = build_loaders(cfg, model.cfg, tokenizer)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, accelerator.num_processes)
    except (OSError, ValueError, KeyError) as e:  # OSError: also a dataset that needs the network
        raise UsageError(e.args[0] if isinstance(e, KeyError) and e.args else str(e).splitlines()[0]) from None
    # weight 0: skip the decoder forward; None: a CLIP, no decoder at all
    caption = (cfg.caption_weight > 0) if getattr(model, "decoder", None) is not None else None
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    loss_fn = CoCaLoss(cfg.contrastive_weight, cfg.caption_weight, cfg.label_smoothing, tokenizer.pad_id)
    extra = {"zero_shot_templates": cfg.zero_shot_templates} if cfg.zero_shot_templates else None
    batches_per_epoch = None if isinstance(train_loader.dataset, torch.utils.data.IterableDataset) \
        else len(train_loader)  # None: a stream, its length unknown
    if batches_per_epoch is not None and batches_per_epoch < cfg.grad_accum_steps:
        raise UsageError(f"data.batch_size x grad_accum_steps x processes exceeds the {cfg.data.root} training set")
    step, epoch, done = 0, 0, 0  # done: batches of this epoch already consumed (skipped ones too)
    if cfg.resume:
        path = find_resume(out, cfg.resume)
        try:
            accelerator.load_state(str(path))  # model, optimizer, scheduler, RNG, sampler, accumulation count
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"resume={path}: the checkpoint does not match this model or optimizer "
                             f"({str(e).splitlines()[0].rstrip(':')})") from None
        step, epoch, done = read_position(path, batches_per_step=cfg.grad_accum_steps,
                                          batches_per_epoch=batches_per_epoch)
        accelerator.print(f"resumed from {path} at step {step} (epoch {epoch}, batch {done})")
    precision = accelerator.mixed_precision
    if precision != "no" and not accelerator.native_amp:  # e.g. fp16 on a CPU: Accelerate keeps float32
        precision = f"{precision} unavailable on {accelerator.device.type}, training in float32 (bf16 works on CPUs)"
    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"device {accelerator.device.type}, mixed precision {precision}")
    accelerator.init_trackers("train", config=_hparams(cfg))
    log_path = out / "losses.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(_hparams(cfg), indent=2) + "\n")
    skips = SkipCounter()
    bar = tqdm(total=cfg.steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    acc: dict[str, float] = {}
    micro, stop = 0, False
    history: list[float] = []
    model.train()
    while step < cfg.steps:
        train_loader.set_epoch(epoch)  # seeded shuffle: seed + epoch
        loader = accelerator.skip_first_batches(train_loader, done) if done else train_loader
        start, consumed, usable_batches = done, done, 0
        done = 0
        for batch in loader:
            consumed += 1
            skips.update(batch)
            if not usable(accelerator, batch):  # (nearly) every image of a batch was unreadable
                continue
            usable_batches += 1
            with accelerator.accumulate(model):
                parts = _forward(model, batch, loss_fn, caption)
                loss = parts["total"]
                if cfg.debug_nan_at_step == step + 1:
                    loss = loss * float("nan")
                if not bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all()):
                    detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items() if k != "total")
                    bar.close()
                    raise NonFiniteLossError(f"non-finite loss at step {step + 1}: total={loss.item()} "
                                             f"({detail}); lower lr or check the data")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                lr = scheduler.get_last_lr()[0]  # the rate this step trains with
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + accelerator.reduce(v.detach().float(), "mean").item()
            micro += 1
            if not accelerator.sync_gradients:
                continue
            with torch.no_grad():  # CLIP caps the temperature at 100
                for name, p in model.named_parameters():
                    if name.endswith("logit_scale"):
                        p.clamp_(0, math.log(100))
            step += 1
            record = {"step": step, **{k: v / micro for k, v in acc.items()}, "lr": lr}
            acc, micro = {}, 0
            history.append(record["total"])
            bar.update(1)
            if accelerator.is_main_process:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            if step % cfg.log_every == 0 or step == cfg.steps:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{record['total']:.4f}", lr=f"{record['lr']:.2e}")
            if val_loader is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics = validate(accelerator, model, val_loader, loss_fn, caption)
                accelerator.log(metrics, step=step)
                lines = sample_captions(accelerator, model, val_set, tokenizer, cfg.eval_captions) \
                    if accelerator.is_main_process else []
                accelerator.print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                for line in lines:
                    accelerator.print(f"  {line}")
            stop = cfg.stop_after is not None and step >= cfg.stop_after
            if (cfg.save_every and step % cfg.save_every == 0) or (stop and step < cfg.steps):
                save_checkpoint(accelerator, model, tokenizer, out, step, cfg.keep_checkpoints, extra,
                                position={"epoch": epoch, "batches": consumed})
            if stop or step >= cfg.steps:
                break
        else:
            if start == 0 and usable_batches == 0:  # a whole epoch without one batch to train on
                bar.close()
                raise UsageError(f"data.root={cfg.data.root}: no usable batch in a whole epoch "
                                 f"({skips.summary()})")
            epoch += 1
            continue
        if stop:
            break
    bar.close()
    finished = step >= cfg.steps
    export = out / "model"
    if finished:
        dtype = getattr(torch, cfg.export_dtype)
        export_model(accelerator, model, tokenizer, export, dtype=None if dtype == torch.float32 else dtype,
                     extra=extra)
    if accelerator.num_processes > 1:  # every process's skips, not only the main one's
        seen, skipped = accelerator.reduce(torch.tensor([skips.seen, skips.skipped], device=accelerator.device),
                                           "sum").tolist()
        skips = SkipCounter(seen=int(seen), skipped=int(skipped))
    accelerator.print(f"data: {skips.summary()}")
    accelerator.print(f"{'finished' if finished else 'stopped'} at step {step}"
                      + (f"; model saved to {export}" if finished else ""))
    accelerator.end_training()
    return {"step": step, "finished": finished, "export": str(export) if finished else None,
            "losses": history, "skipped": skips.skipped}
