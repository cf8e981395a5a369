"""Running a ViT at another resolution: same patch size, bicubically resized position embeddings.

Interpolating to the trained grid is the identity; at twice the size the token
count grows as (N/P)^2 and encoding, captioning, classifying and explaining
still give finite outputs of the right shape; resizing smooth embeddings up and
back is close to the original; a size that is not a multiple of the patch size
is refused with a clear message.

Run: pytest tests/test_resolution.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import perturb, run_vlm
from vlm.errors import UsageError
from vlm.model.coca import create_model
from vlm.model.vit import resize_pos_embed


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return perturb(create_model("tiny")).eval()  # 32x32 input, patch 8: a 4x4 grid


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))


def _smooth_grid(g: int, channels: int = 16) -> torch.Tensor:
    """(g*g, C) embeddings that vary slowly and differently along rows and columns."""
    t = (torch.arange(g, dtype=torch.float64) + 0.5) / g  # patch centres in (0, 1)
    rows, cols = torch.meshgrid(t, t, indexing="ij")
    feats = [torch.cos(math.pi * (k % 3 + 1) * (rows if k % 2 else 0.5 * cols) / 2 + k) for k in range(channels)]
    return torch.stack(feats, dim=-1).reshape(g * g, channels)


def test_resizing_to_the_same_grid_is_bit_exact(tiny):
    pos = tiny.visual.pos_embed.detach()
    assert torch.equal(resize_pos_embed(pos, (4, 4)), pos)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = tiny.visual(x)
        model = create_model("tiny")
        model.load_state_dict(tiny.state_dict())
        model.eval().visual.set_image_size(32)
        after = model.visual(x)
    assert torch.equal(model.visual.pos_embed, tiny.visual.pos_embed)
    assert torch.equal(before.pooled, after.pooled) and torch.equal(before.tokens, after.tokens)


def test_resize_up_then_back_is_close_for_smooth_embeddings():
    cls = torch.randn(1, 16, dtype=torch.float64)
    pos = torch.cat([cls, _smooth_grid(8)])  # (1 + 64, 16)
    up = resize_pos_embed(pos, (16, 16))
    assert up.shape == (1 + 256, 16) and torch.equal(up[0], pos[0])  # the CLS embedding is kept as is
    # the upsampled grid samples the same smooth functions at the finer patch centres (away from
    # the border, where bicubic interpolation has to extrapolate)
    inner = (up[1:] - _smooth_grid(16)).reshape(16, 16, 16)[2:-2, 2:-2]
    assert inner.abs().max() < 0.05
    back = resize_pos_embed(up, (8, 8))
    err = (back - pos).abs().max().item()
    assert err < 0.02, err
    # a transposed grid would not come back: the functions differ along rows and columns
    transposed = _smooth_grid(8).reshape(8, 8, 16).transpose(0, 1).reshape(64, 16)
    assert (transposed - pos[1:]).abs().max() > 0.3


def test_twice_the_resolution_runs_through_every_head(tiny):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = tiny.visual.forward_features(x)
        emb = tiny.encode_image(x)
        out = tiny(x, torch.tensor([[49406, 320, 1929, 49407], [49406, 320, 49407, 0]]))
    assert feats.shape == (2, 1 + (64 // 8) ** 2, 32)  # CLS + (N/P)^2 patch tokens
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    assert out.caption_logits.shape == (2, 3, 49408) and torch.isfinite(out.caption_logits).all()
    # the on-the-fly resize and a permanent set_image_size agree
    model = create_model("tiny")
    model.load_state_dict(tiny.state_dict())
    model.eval().visual.set_image_size(64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), emb, atol=1e-6, rtol=1e-5)


def test_pipeline_at_twice_the_size_encodes_captions_classifies_and_explains(tiny_checkpoint, picture):
    import vlm
    from vlm.explain import position_similarity, vit_attention

    pipe = vlm.load(str(tiny_checkpoint), device="cpu", image_size=64)
    x = pipe.images_to_tensor([picture])
    assert x.shape == (1, 3, 64, 64)
    emb = pipe.encode_images([picture, picture])
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    (caption,) = pipe.caption([picture], max_tokens=6)
    assert isinstance(caption, str)
    (ranked,) = pipe.classify([picture], ["red square", "blue circle", "green star"], top_k=3)
    probs = [p for _, p in ranked]
    assert len(probs) == 3 and all(math.isfinite(p) and 0 <= p <= 1 for p in probs)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    att = vit_attention(pipe.model, x)
    assert att.grid == (8, 8) and att.layers[0].shape == (1, 2, 65, 65)
    assert position_similarity(pipe.model, att.grid).shape == (8, 8, 8, 8)
    # the same image at the trained size differs: the resolution really changed
    base = vlm.load(str(tiny_checkpoint), device="cpu")
    assert not torch.allclose(base.encode_images([picture]), emb[:1])


def test_sizes_that_are_not_a_multiple_of_the_patch_size_are_refused(tiny, tiny_checkpoint):
    import vlm

    with pytest.raises(UsageError, match=r"image_size=36: must be a positive multiple of the patch size 8"):
        vlm.load(str(tiny_checkpoint), device="cpu", image_size=36)
    pipe = vlm.load(str(tiny_checkpoint), device="cpu")
    for bad in (0, -8, 4, 60):
        with pytest.raises(UsageError, match="multiple of the patch size"):
            pipe.set_image_size(bad)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        create_model("tiny").visual.set_image_size(36)
    with pytest.raises(ValueError, match="image size 36x40 is not a multiple of the patch size 8"):
        with torch.no_grad():
            tiny.visual(torch.zeros(1, 3, 36, 40))


def test_cli_image_size_end_to_end(tiny_checkpoint, sample_images, capsys):
    from vlm.cli.main import main

    proc = run_vlm("classify", sample_images["good"], "--labels", "red,green,blue", "--model", tiny_checkpoint,
                   "--image-size", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["image"] == str(sample_images["good"])
    probs = [t["prob"] for t in obj["top"]]
    assert sorted(t["label"] for t in obj["top"]) == ["blue", "green", "red"]
    assert all(math.isfinite(p) for p in probs) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert main(["caption", str(sample_images["good"]), "--model", str(tiny_checkpoint), "--image-size", "36"]) == 2
    out = capsys.readouterr()
    assert out.err.strip() == "vlm caption: error: --image-size 36: must be a positive multiple of the patch size 8"
    assert out.out == ""
