"""Pre-packed decoding weights (vlm.model.packed_linear): same numbers as F.linear, scoped to the
``with`` block, and generation gives the same tokens with and without them."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from vlm.model.packed_linear import _bf16_kernels, available, clear_cache, packed_linears

pytestmark = pytest.mark.skipif(not available(torch.zeros(1)), reason="no MKL in this PyTorch build")


def test_packed_products_match_and_are_scoped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(8, 1, 64)
    with torch.inference_mode():
        ref = net(x)
        with packed_linears([net], rows=8) as n:
            assert n == 2 and "forward" in vars(net[0])
            out = net(x)
            other = net(torch.randn(3, 64))  # another row count: the ordinary path
            assert other.shape == (3, 64)
        assert "forward" not in vars(net[0]) and "forward" not in vars(net[2])
    assert (out - ref).abs().max() < 1e-5 * ref.abs().max()
    with packed_linears([net], rows=8):  # gradients: never the packed path
        y = net(x)
        y.sum().backward()
    assert torch.equal(y, net(x)) and net[0].weight.grad is not None
    clear_cache(net)
    assert not hasattr(net[0], "_vlm_packed")


def test_generation_tokens_identical_with_and_without_packing(monkeypatch):
    from conftest import perturb, shrink

    import vlm.generation.decode as gen
    from vlm.model.config import get_config
    from vlm.model.coca import create_model

    torch.manual_seed(0)
    model = perturb(create_model(shrink(get_config("coca_ViT-B-32"))), scale=1.0).eval()
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(20)  # clear margins between the best tokens
    images = torch.randn(3, 3, model.cfg.vision.image_size, model.cfg.vision.image_size)
    results = []
    for packing in (True, False):
        if not packing:
            monkeypatch.setattr(gen, "packed_linears", lambda mods, rows: contextlib.nullcontext(0))
        for beams in (1, 3):
            cfg = gen.GenerationConfig(max_tokens=12, min_tokens=12, beams=beams)
            results.append(gen.generate(model, images, gen.SpecialTokens(1, 999, 0), cfg))
    assert results[:2] == results[2:]
    assert len({t for row in results[0] for t in row}) > 3


@pytest.mark.skipif(not _bf16_kernels(), reason="no native bfloat16 oneDNN kernels on this CPU / build")
def test_bf16_packed_products_are_bit_identical_and_generation_unchanged(monkeypatch):
    from conftest import perturb, shrink

    import vlm.generation.decode as gen
    from vlm.model.config import get_config
    from vlm.model.coca import create_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).to(torch.bfloat16)
    x = torch.randn(8, 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = net(x)
        with packed_linears([net], rows=8) as n:
            assert n == 2
            out = net(x)
            assert net(torch.randn(3, 64, dtype=torch.bfloat16)).shape == (3, 64)  # other rows: plain path
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    model = perturb(create_model(shrink(get_config("coca_ViT-B-32"))), scale=1.0).eval()
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(20)
    model.to(torch.bfloat16)
    images = torch.randn(3, 3, model.cfg.vision.image_size, model.cfg.vision.image_size, dtype=torch.bfloat16)
    cfg = gen.GenerationConfig(max_tokens=12, min_tokens=12)
    packed = gen.generate(model, images, gen.SpecialTokens(1, 999, 0), cfg)
    monkeypatch.setattr(gen, "packed_linears", lambda mods, rows: contextlib.nullcontext(0))
    assert packed == gen.generate(model, images, gen.SpecialTokens(1, 999, 0), cfg)


@pytest.mark.skipif(not _bf16_kernels(), reason="no native bfloat16 oneDNN kernels on this CPU / build")
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bf16_mlp_takes_its_gelu_inside_the_packed_product(approximate):
    from vlm.model.layers import MLP

    torch.manual_seed(0)
    mlp = MLP(64, 256, "gelu")
    mlp.act.approximate = approximate
    mlp = mlp.to(torch.bfloat16).eval()
    x = torch.randn(8, 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        F = torch.nn.functional
        h = F.gelu(F.linear(x.float(), mlp.fc1.weight.float(), mlp.fc1.bias.float()), approximate=approximate)
        ref = F.linear(h, mlp.fc2.weight.float(), mlp.fc2.bias.float())  # float32 throughout
        with packed_linears([mlp], rows=8):
            assert "forward" in mlp.__dict__  # the fused path is in place
            out = mlp(x)
            assert mlp(torch.randn(3, 64, dtype=torch.bfloat16)).shape == (3, 64)  # other rows: plain path
        assert "forward" not in mlp.__dict__
        unfused = mlp(x)
    assert out.dtype == torch.bfloat16 and out.shape == (8, 1, 64)
    assert not torch.equal(out, unfused)  # GELU on the float32 sums: rounded once, not twice
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()
