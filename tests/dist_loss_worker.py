"""Worker for test_losses: each process holds one shard of a global batch and computes the
contrastive loss (and its gradient) through torch.distributed with the gloo backend."""

import json
import os
import sys

import torch
import torch.distributed as dist

from vlm.losses import contrastive_loss


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
    local_img = torch.nn.functional.normalize(img[shard], dim=-1).requires_grad_()
    local_txt = torch.nn.functional.normalize(txt[shard], dim=-1)
    loss = contrastive_loss(local_img, local_txt, torch.tensor(10.0))
    loss.backward()
    grads = [torch.zeros_like(local_img.grad) for _ in range(world)]
    dist.all_gather(grads, local_img.grad)
    if rank == 0:
        json.dump({"loss": loss.item(), "grad": torch.cat(grads).tolist(), "world": world}, open(out_path, "w"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
