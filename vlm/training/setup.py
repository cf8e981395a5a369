"""Everything a run needs before its first step: ``setup(cfg) -> Run``.

The Accelerator (mixed precision, accumulation, TensorBoard, seedable sampler), the task's
model and data, the optimizer and schedule, ``accelerator.prepare``, and the resume: Accelerate's
``load_state`` plus the ``TrainState`` that says where the data stands. A bad model name, data
path, vocabulary or optimizer setting is a ``UsageError`` of one line (exit status 2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from vlm.errors import UsageError, first_line
from vlm.training.run_log import RunLog, refuse_reused
from vlm.training.state import TrainState, find_resume, prune_incomplete
from vlm.training.task import Task, make_task


@dataclass
class Run:
    cfg: Any
    accelerator: Any
    task: Task
    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    val_loader: Optional[Any]
    state: TrainState
    log: Optional[RunLog]  # None off the main process
    out: Path
    batches_per_epoch: Optional[int]  # None: a stream of unknown length


def hparams(cfg) -> dict:
    """The config flattened to dotted scalar keys (TensorBoard's hparams, train_config.json)."""
    from vlm.io import configio
    from vlm.training.config import config_to_dict

    return {k: v for k, v in configio.leaves(config_to_dict(cfg)) if isinstance(v, (int, float, str, bool))}


def _accelerator(cfg, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    from vlm.training import fsdp

    try:
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            # dispatch_batches=False: every process reads a stream and keeps its share of the batches
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                      dispatch_batches=False),
            fsdp_plugin=fsdp.plugin() if cfg.fsdp else None)  # None: Accelerate's own (--use_fsdp) if any
    except RuntimeError as e:  # Accelerate's FSDP plugin refuses the CPU (accelerate launch --use_fsdp)
        if "FSDP" in str(e) and fsdp.wanted(cfg):
            raise fsdp.cpu_launch_error(first_line(e)) from None
        raise
    fsdp.check_enabled(accelerator, cfg)  # asked for but not running: one line, not a silent DDP run
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:  # torchrun started N copies that would not talk to each other
        raise UsageError(f"WORLD_SIZE={launched}: {launched} processes were launched but Accelerate found no "
                         f"device for distributed training; for CPU processes set ACCELERATE_USE_CPU=1")
    return accelerator


def setup(cfg) -> Run:
    from accelerate.utils import set_seed

    from vlm.training import fsdp
    from vlm.training.data import make_loaders
    from vlm.training.optim import build_optimizer, build_scheduler

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir={out}: exists and is not a directory")
    accelerator = _accelerator(cfg, out)
    if cfg.num_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    resume = find_resume(out, cfg.resume) if cfg.resume else None  # before any file is written
    if resume is None:
        refuse_reused(out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_incomplete(out)  # what a killed run was writing
    task = make_task(cfg)
    try:
        built = task.setup(accelerator, out)
        fsdp.fit_to(accelerator, built.model)  # FSDP: no scalar parameters; units from the model's blocks
        train_loader, val_loader = make_loaders(cfg, built.train_set, built.val_set, built.collate)
        # fused AdamW on GPUs; not under FSDP, whose sharded parameters it has not run on here
        fused = accelerator.device.type == "cuda" and accelerator.distributed_type.value != "FSDP"
        optimizer = build_optimizer(built.model, cfg, built.param_groups, fused=fused)
        scheduler = build_scheduler(optimizer, cfg, accelerator.num_processes)
    except (OSError, ValueError, KeyError) as e:  # OSError: also a dataset that needs the network
        raise UsageError(e.args[0] if isinstance(e, KeyError) and e.args else first_line(e)) from None
    model, optimizer, train_loader, scheduler = accelerator.prepare(built.model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    batches_per_epoch = None if isinstance(train_loader.dataset, torch.utils.data.IterableDataset) \
        else len(train_loader)
    if batches_per_epoch is not None and batches_per_epoch < cfg.grad_accum_steps:
        raise UsageError(f"data.batch_size x grad_accum_steps x processes exceeds the {cfg.data.root} training set")
    state = TrainState()
    if resume is not None:
        try:
            accelerator.load_state(str(resume))  # model, optimizer, scheduler, RNG, sampler, accumulation count
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"resume={resume}: the checkpoint does not match this model or optimizer "
                             f"({first_line(e).rstrip(':')})") from None
        state = TrainState.load(resume, cfg.grad_accum_steps, batches_per_epoch)
        accelerator.print(f"resumed from {resume} at step {state.step} (epoch {state.epoch}, batch {state.batches})")
    _announce(accelerator, task)
    accelerator.init_trackers("train", config=hparams(cfg))
    log = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(hparams(cfg), indent=2) + "\n")
        log = RunLog.open(out, resumed_step=state.step if resume is not None else None)
    return Run(cfg, accelerator, task, model, optimizer, scheduler, train_loader, val_loader, state, log, out,
               batches_per_epoch)


def _announce(accelerator, task: Task) -> None:
    precision = accelerator.mixed_precision
    if precision != "no" and not accelerator.native_amp:  # e.g. fp16 on a CPU: Accelerate keeps float32
        precision = f"{precision} unavailable on {accelerator.device.type}, training in float32 (bf16 works on CPUs)"
    facts = "".join(f", {k} {v}" for k, v in task.metadata().items())
    n = accelerator.num_processes  # with more than one, how they are joined: MULTI_CPU, MULTI_GPU, FSDP, ...
    kind = accelerator.distributed_type.value
    processes = f"{n} process{'es' if n > 1 else ''}" + (f", {kind}" if n > 1 or kind == "FSDP" else "")
    accelerator.print(f"{processes}, device {accelerator.device.type}, mixed precision {precision}, "
                      f"task {task.name}{facts}")
