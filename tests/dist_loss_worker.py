"""Worker for test_losses: each process holds one shard of a global batch and computes the
contrastive loss (and its gradient) through torch.distributed with the gloo backend.
With a third argument "uneven" the shards differ in size (rank 0 holds 3 rows, rank 1 five),
as when one process's batch lost unreadable images.

Teardown is ordered so that no gloo thread is alive when the process exits: rank 0 writes
its result (to a temporary name, then renamed), every rank meets at a barrier, the process
group is destroyed, and the process leaves through ``os._exit`` so that no C++ static
destructor can race a gloo thread ("terminate called without an active exception").

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_loss_worker.py OUT.json [uneven]
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from vlm.training.losses import contrastive_loss


def main(out_path: str, uneven: bool = False) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    bounds = [0, 3, 8] if uneven else [r * 8 // world for r in range(world + 1)]
    shard = slice(bounds[rank], bounds[rank + 1])
    local_img = torch.nn.functional.normalize(img[shard], dim=-1).requires_grad_()
    local_txt = torch.nn.functional.normalize(txt[shard], dim=-1)
    loss = contrastive_loss(local_img, local_txt, torch.tensor(10.0))
    loss.backward()
    grads = [torch.zeros(bounds[r + 1] - bounds[r], 16) for r in range(world)]
    if uneven:  # gloo's all_gather wants equal sizes: send to rank 0 one by one
        if rank == 0:
            grads[0] = local_img.grad
            for r in range(1, world):
                dist.recv(grads[r], src=r)
        else:
            dist.send(local_img.grad, dst=0)
    else:
        dist.all_gather(grads, local_img.grad)
    if rank == 0:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"loss": loss.item(), "grad": torch.cat(grads).tolist(), "world": world}, f)
        os.replace(tmp, out_path)
    dist.barrier()  # every send/recv/all_gather has completed on every rank
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], uneven=sys.argv[2:] == ["uneven"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter/C++ teardown left to race the (already destroyed) gloo group
