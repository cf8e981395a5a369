"""Losses: the contrastive loss across 2 real processes (gloo) equals its single-process
value; the caption loss ignores padding and supports label smoothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlm.training.losses import CoCaLoss, caption_loss, contrastive_loss
from vlm.model.coca import ModelOutput


def test_contrastive_loss_is_symmetric_cross_entropy():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=-1)
    scale = torch.tensor(5.0)
    logits = scale * img @ txt.t()
    expected = (F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.t(), torch.arange(2))) / 2
    assert torch.allclose(contrastive_loss(img, txt, scale), expected)
    # perfectly matched, well separated pairs with a high temperature give ~0 loss
    assert contrastive_loss(img, img, torch.tensor(100.0)) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("shards", ["even", "uneven"])
def test_contrastive_loss_across_two_gloo_processes_equals_single_process(tmp_path, shards):
    # uneven: rank 0 holds 3 of the 8 pairs, rank 1 five (a batch that lost unreadable images)
    worker = Path(__file__).with_name("dist_loss_worker.py")
    out = tmp_path / "dist.json"
    # --standalone: a free rendezvous port each run (fixed ports collide with parallel test runs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(out), shards]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert "terminate called" not in proc.stderr, proc.stderr
    assert "FutureWarning" not in proc.stderr, proc.stderr  # the gather uses torch's non-deprecated collective
    res = json.loads(out.read_text())
    assert res["world"] == 2

    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    img_n = F.normalize(img, dim=-1).requires_grad_()
    loss = contrastive_loss(img_n, F.normalize(txt, dim=-1), torch.tensor(10.0))
    loss.backward()
    assert abs(res["loss"] - loss.item()) < 1e-5
    # each process's gradient w.r.t. its shard, scaled by the world size (DDP then averages)
    # equals the single-process gradient of the global loss
    dist_grad = torch.tensor(res["grad"]) / res["world"]
    assert torch.allclose(dist_grad, img_n.grad, atol=1e-6)


def test_caption_loss_ignores_padding_and_smooths():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 0]])
    keep = labels != 0
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(caption_loss(logits, labels), expected)
    # changing logits at padded positions changes nothing
    logits2 = logits.clone()
    logits2[0, 2:] = 100.0
    assert torch.allclose(caption_loss(logits2, labels), expected)
    smooth = caption_loss(logits, labels, label_smoothing=0.1)
    assert torch.allclose(smooth, F.cross_entropy(logits[keep], labels[keep], label_smoothing=0.1))
    assert not torch.allclose(smooth, expected)


def test_caption_loss_of_bfloat16_logits_is_float32_with_a_bfloat16_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 300) * 6).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(1, 300, (3, 5))
    labels[0, 3:] = 0
    keep = labels != 0
    for smoothing in (0.0, 0.1):
        loss = caption_loss(logits, labels, label_smoothing=smoothing)
        ref = F.cross_entropy(logits.detach().double()[keep], labels[keep], label_smoothing=smoothing)
        assert loss.dtype == torch.float32
        assert abs(float(loss) - float(ref)) < 1e-5
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and bool(logits.grad[~keep].eq(0).all())


def test_coca_loss_weights_and_switches():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    out = ModelOutput(img, txt, torch.tensor(10.0), torch.randn(3, 5, 12), torch.randint(1, 12, (3, 5)))
    parts = CoCaLoss(contrastive_weight=1.0, caption_weight=2.0)(out)
    assert torch.allclose(parts["total"], parts["contrastive"] + 2 * parts["caption"])
    only_cap = CoCaLoss(contrastive_weight=0.0, caption_weight=1.0)(out)
    assert "contrastive" not in only_cap and torch.allclose(only_cap["total"], parts["caption"])
    only_con = CoCaLoss(contrastive_weight=1.0, caption_weight=0.0)(out)
    assert "caption" not in only_con and torch.allclose(only_con["total"], parts["contrastive"])
