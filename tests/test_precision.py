"""Reduced precision (issue 20): bf16 and int8 stay close to fp32 on the default model, every
command takes --precision, an impossible precision is refused in one line, vlm check-precision."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_vlm


@pytest.fixture(scope="session")
def held_out(tmp_path_factory):
    """48 shapes scenes the default model never saw (seed 7; training used other seeds)."""
    from vlm.data.shapes_dir import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("held") / "shapes", n=48, seed=7) / "images"


@pytest.fixture(scope="session")
def pipelines():
    import vlm

    return {p: vlm.load(precision=p, device="cpu") for p in ("fp32", "bf16", "int8")}


@pytest.mark.parametrize("precision,tokens,cosine", [("bf16", 0.99, 0.999), ("int8", 0.97, 0.99)])
def test_agreement_with_fp32_on_the_default_model(pipelines, held_out, precision, tokens, cosine):
    from vlm.io.images import load_image
    from vlm.runtime.agreement import Agreement

    images = [load_image(p) for p in sorted(held_out.iterdir())]
    tally = Agreement()
    tally.add(pipelines["fp32"], pipelines[precision], images)
    r = tally.report()
    assert r["images"] == 48 and r["tokens"] > 300, r
    assert r["reference_top1_probability"] > 0.9, r  # a trained model: peaked, so agreement means something
    assert r["next_token_agreement"] >= tokens, r
    assert r["image_cosine"]["min"] >= cosine and r["text_cosine"]["min"] >= cosine, r


def test_models_are_converted(pipelines):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from vlm.runtime.precision import precision_of

    assert {p: precision_of(pipe.model) for p, pipe in pipelines.items()} == {
        "fp32": "fp32", "bf16": "bf16", "int8": "int8"}
    bf16 = pipelines["bf16"].model
    assert bf16.visual.transformer.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert bf16.decoder.lm_head.weight.dtype == torch.float32  # the output layer stays float32
    assert isinstance(bf16.decoder.lm_head.approx, QLinear)  # its candidate copy: int8 on a CPU
    int8 = pipelines["int8"].model
    assert isinstance(int8.decoder.layers[0].self_block.mlp.fc1, QLinear)
    assert isinstance(int8.visual.transformer.blocks[0].mlp.fc1, QLinear)
    assert int8.decoder.lm_head.weight.dtype == torch.float32  # the output layer stays float32


def test_the_cli_and_runtime_offer_the_same_precisions():
    from vlm.cli.common import PRECISIONS as CLI
    from vlm.runtime.precision import PRECISIONS

    assert CLI == PRECISIONS


@pytest.mark.parametrize("command", [
    ("caption", "{img}", "--precision", "bf16"),
    ("classify", "{img}", "--labels", "red circle,blue square", "--precision", "int8"),
    ("similarity", "--images", "{img}", "--texts", "a red circle", "--precision", "bf16"),
    ("index", "{img}", "--out", "{tmp}/idx", "--workers", "0", "--precision", "int8"),
])
def test_every_command_takes_precision(held_out, tmp_path, command):
    img = sorted(held_out.iterdir())[0]
    r = run_vlm(*[a.format(img=img, tmp=tmp_path) for a in command], "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if command[0] == "index":
        assert json.loads((tmp_path / "idx" / "index.json").read_text())["precision"] == "int8"
    elif command[0] == "caption":
        assert json.loads(r.stdout)["caption"].strip(), r.stdout


def test_an_impossible_precision_is_refused_in_one_line(sample_images):
    import vlm
    from vlm.errors import InvalidOption
    from vlm.runtime.precision import check_precision

    r = run_vlm("caption", sample_images["good"], "--precision", "fp16")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--precision" in r.stderr and "fp16" in r.stderr
    with pytest.raises(InvalidOption, match=r"precision='fp16': must be one of fp32, bf16, int8"):
        vlm.load(precision="fp16", device="cpu")
    with pytest.raises(InvalidOption, match=r"precision='int8': dynamic int8 quantisation runs on the CPU only"):
        check_precision("int8", torch.device("cuda"))  # a device check only: no GPU needed to refuse
    r = run_vlm("check-precision", sample_images["good"], "--precision", "fp32")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("vlm check-precision: error: --precision fp32: compare a reduced precision")


def test_check_precision_command(held_out, sample_images):
    imgs = sorted(held_out.iterdir())[:6]
    r = run_vlm("check-precision", *imgs, sample_images["missing"], "--precision", "int8", "--json")
    assert r.returncode == 1, r.stderr  # one input could not be read: named, the rest compared
    assert r.stderr.splitlines() == [f"vlm check-precision: error: {sample_images['missing']}: no such file or directory"]
    out = json.loads(r.stdout)
    assert out["precision"] == "int8" and out["images"] == 6 and out["captions"] == 6 and out["tokens"] > 30
    assert 0.9 <= out["next_token_agreement"] <= 1 and out["image_cosine"]["min"] >= 0.99
    r = run_vlm("check-precision", *imgs[:2])  # bf16 by default; the text report
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("default at bf16 against fp32, 2 images:") and "next-token top-1 agreement" in r.stdout
