"""FSDP for training (``fsdp: true``): Accelerate's ``FullyShardedDataParallelPlugin``, and the
check that Accelerate really turned it on.

Fully sharded data parallelism (Zhao et al. 2023, PyTorch FSDP) keeps 1/N of every weight,
gradient and optimizer state on each of N processes and gathers a layer's weights just before
it runs. vlm uses FSDP2 (``torch.distributed.fsdp.fully_shard``) through Accelerate, with the
full-shard strategy (weights freed again after the forward), one shard unit per transformer
block (``Block``, ``CrossBlock``) plus the root, and sharded checkpoints
(``save_state``/``load_state`` write ``torch.distributed.checkpoint`` folders). Exports gather
the full weights with ``accelerator.get_state_dict`` (``vlm.training.export``).

Accelerate 1.16 enables FSDP only on accelerators (GPUs and the like): on CPU processes it
keeps ``MULTI_CPU`` (plain DDP) and drops the plugin without a word, and
``accelerate launch --use_fsdp`` on CPU stops with "FSDP parameter initialization with
`sync_module_states=True` is not supported on cpu." ``check_enabled`` turns both into one line.

    vlm train --config configs/micro.yaml fsdp=true --multi_gpu --num_processes 2
    vlm train --config configs/micro.yaml fsdp=true --use_fsdp --num_processes 1   # one GPU
"""

from __future__ import annotations

import os

from torch import nn

from vlm.errors import UsageError

WRAP = ["Block", "CrossBlock"]  # vlm.model.layers: one FSDP unit per transformer block
CPU_REASON = "Accelerate {version} runs FSDP on GPUs only (on CPU processes it would train with plain DDP)"


def plugin():
    """The FSDP plugin vlm trains with: FSDP2, full shard, per-block units, sharded checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=True,  # FULL_SHARD: parameters resharded after the forward
        auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=list(WRAP),
        state_dict_type="SHARDED_STATE_DICT",
        # every process builds the model from the same seed, so none needs rank 0's weights sent over;
        # and Accelerate < 1.16 cannot send a top-level parameter (logit_scale): "ValueError: not enough
        # values to unpack" in fsdp2_load_full_state_dict, seen on one H200 with Accelerate 1.15, where
        # `accelerate launch --use_fsdp` turns this loading on by default
        cpu_ram_efficient_loading=False)


def vector_scalars_(model: nn.Module) -> list[str]:
    """Replace every 0-dim parameter (``logit_scale``) by a 1-element one, in place; returns their
    names. FSDP (1 and 2) refuses scalars: "fully_shard doesn't support scalar parameters. Change
    logit_scale to a 1D tensor with numel equal to 1." Exports reshape them back
    (``vlm.training.export.gathered_copy``). Before the optimizer is built."""
    names = []
    for module_name, module in model.named_modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.ndim == 0:
                setattr(module, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
                names.append(f"{module_name}.{name}".lstrip("."))
    return names


def fit_to(accelerator, model) -> None:
    """Under FSDP: 1-element parameters for scalars (``vector_scalars_``), and shard units from the
    block classes this model has (a CLIP or a classifier has no ``CrossBlock``; Accelerate refuses
    a class name it cannot find). Before the optimizer is built and ``prepare``."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None) if accelerator.distributed_type.value == "FSDP" \
        else None
    if plugin is None:
        return
    vector_scalars_(model)
    if plugin.transformer_cls_names_to_wrap is None:
        return
    present = {type(m).__name__ for m in model.modules()}
    plugin.transformer_cls_names_to_wrap = [n for n in plugin.transformer_cls_names_to_wrap if n in present]


def wanted(cfg) -> bool:
    """FSDP asked for by the training config or by ``accelerate launch --use_fsdp``."""
    return bool(cfg.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_enabled(accelerator, cfg) -> None:
    """A ``UsageError`` when FSDP was asked for but Accelerate runs something else."""
    import accelerate
    from accelerate.utils import DistributedType

    if not wanted(cfg) or accelerator.distributed_type == DistributedType.FSDP:
        return
    what = "fsdp=true" if cfg.fsdp else "--use_fsdp"
    if accelerator.device.type == "cpu":
        raise UsageError(f"{what}: {CPU_REASON.format(version=accelerate.__version__)}; "
                         f"train on CPUs without FSDP (distributed type {accelerator.distributed_type.value})")
    raise UsageError(f"{what}: Accelerate did not enable FSDP (distributed type "
                     f"{accelerator.distributed_type.value}); launch with vlm train ... --multi_gpu "
                     f"--num_processes N (N >= 2), or --use_fsdp --num_processes 1 on one GPU")


def cpu_launch_error(message: str) -> UsageError:
    """Accelerate's own refusal of FSDP on CPU (``--use_fsdp`` with ``ACCELERATE_USE_CPU=1``) as one line."""
    import accelerate

    return UsageError(f"--use_fsdp: {CPU_REASON.format(version=accelerate.__version__)}: {message}")
