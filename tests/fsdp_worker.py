"""Worker for test_train_fsdp: vlm's CoCa under torch's own FSDP2 (``fully_shard``, full shard, one
unit per ``Block``/``CrossBlock`` plus the root) against DDP, on gloo CPU processes.

Accelerate 1.16 will not run FSDP on CPUs, but torch will: this shows that the model itself
shards (its scalar ``logit_scale`` trained as a 1-element parameter, ``vector_scalars_``), that
FSDP gives DDP's losses step for step (each process holds one shard of the global batch; the
contrastive loss gathers across processes), that a sharded checkpoint (model and optimizer,
``torch.distributed.checkpoint``) loaded into a fresh sharded model gives the same next step, and
that the gathered full state dict loads into a
fresh model (``vlm.training.export.load_gathered``) equal to the DDP model's weights.

Teardown as in dist_loss_worker.py: rank 0 writes its result (temporary name, then renamed), a
barrier, the group destroyed, ``os._exit``.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/fsdp_worker.py OUT.json
"""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist


def main(out_path: str, steps: int = 3) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from vlm.model.coca import create_model
    from vlm.model.layers import Block, CrossBlock
    from vlm.training.export import load_gathered
    from vlm.training.fsdp import vector_scalars_
    from vlm.training.losses import CoCaLoss

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every process
    base = create_model("tiny")
    ddp = DistributedDataParallel(copy.deepcopy(base))

    def shard_model():
        model = copy.deepcopy(base)
        names = vector_scalars_(model)
        for module in model.modules():
            if isinstance(module, (Block, CrossBlock)):
                fully_shard(module)
        fully_shard(model)
        return model, names

    sharded, scalars = shard_model()
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ddp, sharded)]
    loss_fn = CoCaLoss(pad_id=0)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        images = torch.randn(4 * world, 3, 32, 32, generator=g)  # the global batch, 4 pairs a process
        text = torch.randint(1, 49000, (4 * world, 12), generator=g)
        text[:, 0], text[:, -1] = 49406, 49407
        batches.append((images[4 * rank:4 * rank + 4], text[4 * rank:4 * rank + 4]))

    def step(model, opt, batch) -> float:
        total = loss_fn(model(*batch))["total"]
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = total.detach().clone()
        dist.all_reduce(mean)
        return float(mean) / world

    losses = {"ddp": [], "fsdp": [], "resumed": []}
    checkpoint = os.path.join(os.path.dirname(os.path.abspath(out_path)), "fsdp_checkpoint")
    for i, batch in enumerate(batches):
        if i == steps - 1:  # a sharded checkpoint (torch.distributed.checkpoint) before the last step
            model_state, optim_state = get_state_dict(sharded, opts[1])
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint)
        losses["ddp"].append(step(ddp, opts[0], batch))
        losses["fsdp"].append(step(sharded, opts[1], batch))
    resumed, _ = shard_model()  # a fresh sharded model and optimizer, loaded from the checkpoint
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=3e-3)
    step(resumed, resumed_opt, batches[0])  # gives the optimizer its state tensors; overwritten below
    model_state, optim_state = get_state_dict(resumed, resumed_opt)
    loaded = {"model": model_state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_state_dict(resumed, resumed_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    losses["resumed"].append(step(resumed, resumed_opt, batches[-1]))
    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        fresh = load_gathered(create_model("tiny"), state)
        ref = ddp.module.state_dict()
        diff = max(float((fresh.state_dict()[k] - v).abs().max()) for k, v in ref.items())
        result = {"losses": losses, "scalars": scalars, "export_max_abs_diff": diff,
                  "logit_scale_shape": list(fresh.logit_scale.shape), "shards": world}
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh)
        os.replace(tmp, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
