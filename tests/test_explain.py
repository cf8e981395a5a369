"""Tests for ``vlm explain`` and ``vlm.explain``: attention capture, distance, rollout, filters,
position similarity, decoder cross-attention, the figures and the command line.

Run: pytest tests/test_explain.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import perturb, run_vlm
from vlm.model.config import get_config
from vlm.explain import (
    attention_probs,
    attention_rollout,
    capture_attention,
    cross_attention,
    filter_pca,
    mean_attention_distance,
    patch_filters,
    position_similarity,
    rollout_matrix,
    vit_attention,
)
from vlm.explain import figures
from vlm.model.coca import create_model


@pytest.fixture(scope="module")
def coca_attn():
    """tiny: CoCa with an attentional pooler (pool="attn"), 32x32 images, 4x4 patches of 8 px."""
    torch.manual_seed(0)
    return perturb(create_model("tiny")).eval()


@pytest.fixture(scope="module")
def coca_cls():
    """The default model's layout: CoCa pooled by the CLS token; the decoder reads the patch tokens."""
    cfg = get_config("tiny")
    cfg.vision.pool = "cls"
    torch.manual_seed(1)
    return perturb(create_model(cfg)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _valid_png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.width > 0 and im.height > 0
        return im.size


# ---------------------------------------------------------------- capturing attention


def test_recomputed_probabilities_reproduce_the_sdpa_output(coca_attn, images):
    """probs @ v through out_proj must equal what the fast SDPA path returned, for self- and cross-attention."""
    visual = coca_attn.visual
    block = visual.transformer.blocks[1]
    pool = visual.attn_pool.attn
    outputs = {}
    block.attn.register_forward_hook(lambda m, a, o: outputs.__setitem__("block", (a[0], o)))
    pool.register_forward_hook(lambda m, a, kw, o: outputs.__setitem__("pool", (a[0], kw["context"], o)),
                               with_kwargs=True)
    try:
        with torch.no_grad():
            visual(images)
            x, out = outputs["block"]
            p = attention_probs(block.attn, x)  # (B, heads, T, T)
            v = block.attn._split(block.attn.qkv(x).chunk(3, dim=-1)[2])
            y = block.attn.out_proj((p @ v).transpose(1, 2).reshape(x.shape))
            torch.testing.assert_close(y, out, atol=1e-5, rtol=1e-4)
            q, ctx, out = outputs["pool"]
            p = attention_probs(pool, q, context=ctx)  # (B, heads, n_queries, T)
            v = pool._split(pool.kv_proj(ctx).chunk(2, dim=-1)[1])
            y = pool.out_proj((p @ v).transpose(1, 2).reshape(q.shape))
            torch.testing.assert_close(y, out, atol=1e-5, rtol=1e-4)
    finally:
        block.attn._forward_hooks.clear()
        pool._forward_hooks.clear()
        pool._forward_hooks_with_kwargs.clear()


def test_causal_and_masked_attention_is_recomputed_with_its_mask(coca_attn):
    """The text tower runs with a boolean (B, 1, L+1, L+1) mask: no query may see a future or padded key."""
    text = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    mods = {"text0": coca_attn.text.transformer.blocks[0].attn}
    with torch.no_grad(), capture_attention(mods) as rec:
        coca_attn.text(text)
    p = rec.get("text0")  # (2, heads, 6, 6): 5 tokens + the appended CLS
    assert p.shape == (2, 2, 6, 6)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 6))
    assert torch.all(p.triu(diagonal=1) == 0), "a query attended to a later key"
    assert torch.all(p[0, :, :, 3:5] == 0), "a query attended to padding"


def test_capture_changes_nothing_and_removes_its_hooks(coca_attn, images):
    with torch.no_grad():
        before = coca_attn.visual(images).pooled
        att = vit_attention(coca_attn, images)
        after = coca_attn.visual(images).pooled
    assert torch.equal(before, after)
    assert all(not b.attn._forward_hooks for b in coca_attn.visual.transformer.blocks)
    assert len(att.layers) == 2 and att.grid == (4, 4) and att.num_prefix == 1 and att.patch_size == 8
    for a in att.layers:
        assert a.shape == (2, 2, 17, 17)
        np.testing.assert_allclose(a.sum(-1), 1, atol=1e-5)
    assert att.pooler.shape == (2, 2, 5, 17)


# ---------------------------------------------------------------- mean attention distance


def _layer(a: np.ndarray, batch: int = 1, heads: int = 1) -> np.ndarray:
    return np.broadcast_to(a, (batch, heads) + a.shape).copy()  # (B, H, T, T)


def test_attention_on_self_has_distance_zero():
    d = mean_attention_distance([_layer(np.eye(17), 2, 3)], (4, 4), 8, 1)
    assert d.shape == (1, 3)
    np.testing.assert_array_equal(d, 0)


def test_uniform_attention_on_a_2x2_grid_matches_the_hand_computed_distance():
    # Each patch sees itself (0), two neighbours (P) and the diagonal one (P*sqrt 2): mean (2 + sqrt 2) P / 4.
    P = 16
    expected = (2 + math.sqrt(2)) * P / 4
    with_cls = np.full((5, 5), 1 / 5)  # the CLS share is dropped and the rest renormalised
    no_cls = np.full((4, 4), 1 / 4)
    d1 = mean_attention_distance([_layer(with_cls)], (2, 2), P, num_prefix=1)
    d0 = mean_attention_distance([_layer(no_cls)], (2, 2), P, num_prefix=0)
    np.testing.assert_allclose(d1, [[expected]])
    np.testing.assert_allclose(d0, [[expected]])


def test_distance_is_per_head_and_in_pixels():
    # head 0 looks at the patch to the right (wrapping at the row end: 3 patches to the left),
    # head 1 only at the CLS token: no patch distance.
    a = np.zeros((1, 2, 5, 5))
    for q, k in [(1, 2), (2, 1), (3, 4), (4, 3)]:
        a[0, 0, q, k] = 1
    a[0, 0, 0, 0] = 1
    a[0, 1, :, 0] = 1
    d = mean_attention_distance([a], (2, 2), patch_size=10, num_prefix=1)
    assert d[0, 0] == pytest.approx(10.0)
    assert np.isnan(d[0, 1])


# ---------------------------------------------------------------- rollout


def test_rollout_of_identity_layers_is_the_identity():
    layers = [_layer(np.eye(5), 2, 2)] * 3
    np.testing.assert_allclose(rollout_matrix(layers), np.broadcast_to(np.eye(5), (2, 5, 5)))
    np.testing.assert_array_equal(attention_rollout(layers, num_prefix=1), np.zeros((2, 2, 2)))


def test_rollout_of_uniform_layers_matches_the_closed_form():
    # ((U + I) / 2)^L = I / 2^L + (1 - 2^-L) U for the uniform U: every patch gets (1 - 2^-L) / T.
    T, L = 5, 3
    maps = attention_rollout([_layer(np.full((T, T), 1 / T))] * L, num_prefix=1)
    np.testing.assert_allclose(maps, np.full((1, 2, 2), (1 - 2.0**-L) / T))


def test_rollout_peaks_where_the_cls_token_looks():
    a = np.eye(17)
    a[0] = 0
    a[0, 1 + 6] = 1  # CLS attends only to patch 6 = row 1, column 2 of the 4x4 grid
    maps = attention_rollout([_layer(a)], num_prefix=1)
    assert maps.shape == (1, 4, 4)
    assert np.unravel_index(maps[0].argmax(), (4, 4)) == (1, 2)
    assert maps[0, 1, 2] == pytest.approx(0.5)  # half to the residual, half to the patch


def test_rollout_multiplies_later_layers_on_the_left():
    # Layer 1: patch 0 copies patch 3. Layer 2: CLS copies patch 0. Without the residual the
    # CLS token ends up carrying patch 3 only; the reversed product would give patch 0.
    first, second = np.eye(5), np.eye(5)
    first[1] = 0
    first[1, 4] = 1
    second[0] = 0
    second[0, 1] = 1
    maps = attention_rollout([_layer(first), _layer(second)], num_prefix=1, residual=False)
    np.testing.assert_array_equal(maps[0], [[0, 0], [0, 1]])


def test_rollout_follows_the_pooler_query_through_the_layers():
    pooler = np.zeros((1, 2, 3, 5))
    pooler[0, :, 0, 1 + 2] = 1  # both heads of the contrastive query look at patch 2
    pooler[0, :, 1:, 1] = 1  # the caption queries elsewhere: ignored
    maps = attention_rollout([_layer(np.eye(5))] * 2, num_prefix=1, pooler=pooler)
    np.testing.assert_array_equal(maps[0], [[0, 0], [1, 0]])
    with pytest.raises(ValueError, match="no CLS token and no pooler"):
        attention_rollout([_layer(np.eye(4))], num_prefix=0)


# ---------------------------------------------------------------- filters and position embeddings


def test_patch_filters_shapes_and_raw_layout(coca_attn):
    w = coca_attn.visual.patch_embed.weight.detach().numpy()  # (32, 3, 8, 8)
    pcs = patch_filters(coca_attn, n=10)
    raw = patch_filters(coca_attn, n=5, mode="raw")
    assert pcs.shape == (10, 8, 8, 3) and raw.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(raw[2, 1, 4], w[2, :, 1, 4], rtol=1e-6)  # tile[y, x] = RGB of filter pixel
    flat = pcs.reshape(10, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(10), atol=1e-8)  # orthonormal components
    with pytest.raises(ValueError, match="mode"):
        patch_filters(coca_attn, mode="ica")


def test_first_principal_component_recovers_the_dominant_filter_pattern():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(3, 8, 8))
    weight = rng.normal(size=(64, 1, 1, 1)) * 5 * pattern + rng.normal(size=(64, 3, 8, 8)) * 0.1
    comps, share = filter_pca(weight, 4)
    cos = abs(comps[0].transpose(2, 0, 1).ravel() @ pattern.ravel()) / np.linalg.norm(pattern)
    assert cos > 0.99
    assert share[0] > 0.9 and np.all(np.diff(share) <= 0)


def test_position_similarity_is_cosine_of_the_embeddings(coca_attn):
    visual = coca_attn.visual
    with torch.no_grad():
        old = visual.pos_embed.clone()
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        feats = [f(w * g) for w in (0.2, 0.3, 0.4, 0.5) for g in (rows, cols) for f in (torch.cos, torch.sin)]
        smooth = torch.stack(feats * 2, dim=-1).reshape(16, 32)  # similarity falls with distance
        visual.pos_embed[1:] = smooth
        try:
            sim = position_similarity(coca_attn)
            big = position_similarity(coca_attn, grid=(8, 8))  # the bicubically resized embeddings
        finally:
            visual.pos_embed.copy_(old)
    assert sim.shape == (4, 4, 4, 4) and big.shape == (8, 8, 8, 8)
    e = torch.nn.functional.normalize(smooth, dim=-1)
    np.testing.assert_allclose(sim[1, 2, 3, 0], float(e[1 * 4 + 2] @ e[3 * 4 + 0]), rtol=1e-5)
    np.testing.assert_allclose(sim.reshape(16, 16), sim.reshape(16, 16).T, atol=1e-6)
    np.testing.assert_allclose(np.einsum("ijij->ij", sim), 1, atol=1e-5)
    assert sim[0, 0, 0, 1] > sim[0, 0, 3, 3]  # smooth embeddings: near patches more alike than far ones


# ---------------------------------------------------------------- decoder cross-attention


def test_cross_attention_on_patch_tokens_is_a_distribution_per_position(coca_cls, images):
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0]])
    maps = cross_attention(coca_cls, images, ids)
    assert maps.shape == (2, 5, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(-2, -1)), 1, atol=1e-5)
    last = cross_attention(coca_cls, images, ids, layers="last")
    assert last.shape == maps.shape and not np.allclose(last, maps)


def test_cross_attention_through_the_pooler_is_a_sub_distribution(coca_attn, images):
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    maps = cross_attention(coca_attn, images, ids)
    assert maps.shape == (2, 3, 4, 4)
    total = maps.sum(axis=(-2, -1))
    assert np.all(maps >= 0) and np.all(total <= 1 + 1e-5) and np.all(total > 0.5)


def _tiny_clip():
    cfg = get_config("tiny")
    cfg.model_type, cfg.decoder = "clip", None
    return create_model(cfg).eval()


def test_cross_attention_needs_a_decoder(images):
    with pytest.raises(ValueError, match="no caption decoder"):
        cross_attention(_tiny_clip(), images, torch.tensor([[1, 5, 2]]))


def test_cross_attention_at_position_t_sees_only_tokens_up_to_t(coca_cls, images):
    a = torch.tensor([[1, 5, 6, 7, 2]])
    b = torch.tensor([[1, 5, 6, 30, 2]])  # differs from token 3 on
    ma, mb = cross_attention(coca_cls, images[:1], a), cross_attention(coca_cls, images[:1], b)
    np.testing.assert_allclose(ma[:, :3], mb[:, :3], atol=1e-6)
    assert not np.allclose(ma[:, 3], mb[:, 3])


# ---------------------------------------------------------------- figures


def test_each_figure_function_writes_a_png(tmp_path, coca_attn, images):
    att = vit_attention(coca_attn, images)
    pic = np.random.default_rng(0).random((32, 32, 3))
    dist = mean_attention_distance(att.layers, att.grid, att.patch_size, att.num_prefix)
    roll = attention_rollout(att.layers, att.num_prefix, att.pooler, att.grid)
    maps = cross_attention(coca_attn, images[:1], torch.tensor([[1, 5, 6, 7, 2]]))[0]
    assert dist.shape == (2, 2) and np.all((dist >= 0) & (dist <= 8 * 3 * math.sqrt(2)))
    assert roll.shape == (2, 4, 4) and np.all(roll >= 0)
    figures.plot_filters(patch_filters(coca_attn, n=9), tmp_path / "f.png", labels=[str(i) for i in range(9)])
    figures.plot_position_similarity(position_similarity(coca_attn), tmp_path / "p.png")
    figures.plot_attention_distance(dist, tmp_path / "d.png", reference=12.0)
    figures.plot_attention_overlay(pic, roll[0], tmp_path / "r.png")
    figures.plot_token_maps(pic, maps, ["a", "red", " ", "<end>"], tmp_path / "t.png")
    for name in "fpdrt":
        _valid_png(tmp_path / f"{name}.png")


def test_masked_overlay_dims_unattended_pixels():
    image = np.ones((16, 16, 3))
    heat = np.zeros((2, 2))
    heat[0, 1] = 1.0  # the top-right patch only
    out = figures.masked(image, heat)
    assert out.shape == (16, 16, 3)
    assert out[2, 13].min() > 0.9 and out[13, 2].max() < 0.3


# ---------------------------------------------------------------- the Python report and the command


def test_explain_image_writes_every_figure(tmp_path, tiny_checkpoint):
    import vlm
    from vlm.explain.report import explain_image

    pipe = vlm.load(str(tiny_checkpoint), device="cpu")
    img = Image.fromarray((np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8))
    res = explain_image(pipe, img, tmp_path / "out", text="a red circle", num_filters=6)
    assert set(res.files) == {"filters", "position_similarity", "attention_distance", "attention_rollout",
                              "token_attention"}
    for path in res.files.values():
        _valid_png(path)
    assert res.caption == "a red circle" and not res.caption_generated
    assert res.distances.shape == (2, 2) and res.rollout.shape == (4, 4)


def test_cli_explain_json_with_text_at_twice_the_resolution(tmp_path, tiny_checkpoint, sample_images):
    out = tmp_path / "explain"
    r = run_vlm("explain", sample_images["good"], "--model", tiny_checkpoint, "--out", out, "--text",
                "a red square", "--image-size", "64", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["image"] == str(sample_images["good"]) and obj["caption"] == "a red square"
    assert obj["caption_generated"] is False
    assert set(obj["files"]) == {"filters", "position_similarity", "attention_distance", "attention_rollout",
                                 "token_attention"}
    for path in obj["files"].values():
        _valid_png(path)
    # exactly the listed figures were written
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.png" for k in obj["files"])


def test_cli_explain_without_text_captions_the_image_itself(tmp_path, tiny_checkpoint, sample_images):
    out = tmp_path / "explain"
    r = run_vlm("explain", sample_images["good"], "--model", tiny_checkpoint, "--out", out, "--filters", "raw",
                "--decoder-layers", "last", "--max-tokens", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    for name in ("filters", "position_similarity", "attention_distance", "attention_rollout"):
        _valid_png(lines[name])
    assert "caption (generated)" in lines


@pytest.mark.parametrize("case", ["missing", "notimage", "empty_text"])
def test_cli_explain_bad_input_is_one_line(tmp_path, tiny_checkpoint, sample_images, case):
    image = sample_images["missing" if case == "missing" else "notimage" if case == "notimage" else "good"]
    extra = ["--text", "  "] if case == "empty_text" else []
    r = run_vlm("explain", image, "--model", tiny_checkpoint, "--out", tmp_path / "o", *extra)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("vlm explain: error:")
    assert (str(image) in err) if case != "empty_text" else ("--text" in err)
    assert not (tmp_path / "o").exists()


def test_cli_explain_text_on_a_model_without_decoder(tmp_path, sample_images, capsys):
    from vlm.io.checkpoint import save_pretrained
    from vlm.cli.main import main
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    ck = save_pretrained(_tiny_clip(), tmp_path / "clip", tokenizer=CLIPBPETokenizer(context_length=32))
    assert main(["explain", str(sample_images["good"]), "--model", str(ck), "--out", str(tmp_path / "o"),
                 "--text", "a cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "caption decoder" in err and "--text" in err
    # without --text a CLIP model still gets the four ViT figures
    assert main(["explain", str(sample_images["good"]), "--model", str(ck), "--out", str(tmp_path / "o"),
                 "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj["files"]) == {"filters", "position_similarity", "attention_distance", "attention_rollout"}
    assert "caption" not in obj


def test_explain_image_errors_name_parameters_and_the_cli_names_flags(tmp_path, tiny_checkpoint):
    """``explain_image`` speaks Python (``text=``, ``out_dir=``); the command line says ``--text``,
    ``--out`` (issue 13 item 2)."""
    import vlm
    from vlm.io.checkpoint import save_pretrained
    from vlm.errors import InvalidOption
    from vlm.explain.report import explain_image
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    coca = vlm.load(str(tiny_checkpoint), device="cpu")
    clip = vlm.load(str(save_pretrained(_tiny_clip(), tmp_path / "clip", tokenizer=CLIPBPETokenizer(context_length=32))),
                    device="cpu")
    (tmp_path / "file").write_text("x")
    for call, api, cli in [
        (lambda: explain_image(coca, img, tmp_path / "o", text="  "), "text='  ': is empty", "--text '  ': is empty"),
        (lambda: explain_image(clip, img, tmp_path / "o", text="a cat"), "text='a cat': needs a caption decoder",
         "--text 'a cat': needs a caption decoder"),
        (lambda: explain_image(coca, img, tmp_path / "file" / "o"), f"out_dir='{tmp_path / 'file' / 'o'}': cannot create",
         f"--out {tmp_path / 'file' / 'o'}: cannot create the directory"),
    ]:
        with pytest.raises(InvalidOption) as e:
            call()
        assert api in str(e.value) and "--" not in str(e.value), str(e.value)
        assert e.value.cli_message().startswith(cli), e.value.cli_message()


def test_cli_explain_memory_refusal_names_the_image_size_it_was_given(tiny_checkpoint, sample_images, tmp_path,
                                                                      monkeypatch, capsys):
    """explain runs one image: a size that cannot fit is blamed on --image-size, not on a hidden
    --batch-size of 16 (issue 13 item 3)."""
    import vlm.runtime.limits
    from vlm.io.checkpoint import read_config
    from vlm.cli.explain import build_parser
    from vlm.cli.main import main

    cfg = read_config(tiny_checkpoint)[0]
    need = vlm.runtime.limits.inference_bytes(cfg, 1024, 1)
    monkeypatch.setattr(vlm.runtime.limits, "available_bytes", lambda device=None: need - 1)
    assert main(["explain", str(sample_images["good"]), "--model", str(tiny_checkpoint), "--out",
                 str(tmp_path / "o"), "--image-size", "1024", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlm explain: error: --image-size 1024: needs about") and "batch" not in err, err
    assert len(err.splitlines()) == 1
    assert "--batch-size" not in build_parser().format_help()
