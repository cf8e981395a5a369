"""`vlm export onnx`: onnxruntime (CPU) gives the same embeddings (within 1e-4) and, driven by a greedy
loop of its own (vlm.export.onnx_runtime: numpy + onnxruntime only), the same caption tokens as vlm.

Models: the shipped default CoCa, and open_clip's coca_ViT-B-32 and ViT-B-32 layouts (tiny widths,
every structural switch kept: attentional pooler, appended CLS with the legacy mask, EOT pooling)
converted to vlm with random non-degenerate weights. The full-size figures are in BENCHMARKS.md
(benchmarks/export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from conftest import REPO, run_vlm  # noqa: E402

import vlm  # noqa: E402
from vlm.export import ExportRefused, export  # noqa: E402
from vlm.export.onnx_runtime import OnnxModel  # noqa: E402
from vlm.generation.config import GenerationConfig, SpecialTokens
from vlm.generation.decode import generate  # noqa: E402

TOL = 1e-4
EXAMPLES = sorted((REPO / "examples").glob("*.png"))
TEXTS = ["a small blue triangle", "a red star and an orange square", "", "three shapes from left to right"]


def _converted(arch: str, seed: int = 0):
    """A vlm model converted from an open_clip model of ``arch``'s layout (tiny widths, random weights)."""
    open_clip = pytest.importorskip("open_clip")
    from vlm.api import Pipeline
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from parity_weights import randomize_, shrink_open_clip_cfg
    from vlm.io.images import PreprocessConfig
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    cfg = shrink_open_clip_cfg(open_clip.get_model_config(arch))
    cls = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CLIP
    oc = randomize_(cls(**{k: v for k, v in cfg.items() if k != "custom_text"}), seed=seed, logit_gain=4.0)
    model = from_open_clip_model(oc.eval(), config_from_open_clip(cfg))
    tok = CLIPBPETokenizer(context_length=model.cfg.text.context_length)
    return Pipeline(model, tok, PreprocessConfig.for_model(model.cfg), torch.device("cpu"), name=arch)


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "default"
    r = run_vlm("export", "onnx", "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: onnx (") and "onnxruntime" in r.stdout
    return out


def test_default_model_manifest_and_embeddings(default_export):
    manifest = json.loads((default_export / "manifest.json").read_text())
    assert manifest["opset"] == 17 and manifest["onnxruntime_version"] == __import__("onnxruntime").__version__
    assert set(manifest["graphs"]) == {"image_encoder", "text_encoder", "caption_image_kv", "caption_step"}
    assert manifest["preprocess"]["resize_mode"] == "squash" and manifest["preprocess"]["image_size"] == 64
    assert manifest["tokenizer"]["files"] == ["spm.model", "tokenizer_config.json"]
    assert max(manifest["parity_max_abs_diff"].values()) < TOL
    pipe = vlm.load()
    m = OnnxModel(default_export)
    from PIL import Image

    pixels = np.stack([m.preprocess(Image.open(p)) for p in EXAMPLES])  # the manifest's preprocessing, no vlm
    assert np.array_equal(pixels, pipe.images_to_tensor([str(p) for p in EXAMPLES]).numpy())
    assert np.abs(m.encode_images(pixels) - pipe.encode_images([str(p) for p in EXAMPLES]).numpy()).max() < TOL
    from vlm.tokenizers import load_tokenizer

    tok = load_tokenizer(default_export / "tokenizer")
    for ids in (tok(TEXTS), tok(TEXTS[:1], context_length=9)):  # dynamic batch and sequence length
        ref = pipe.model.encode_text(ids).detach().numpy()
        assert np.abs(m.encode_texts(ids.numpy()) - ref).max() < TOL
    assert abs(manifest["logit_scale"] - float(pipe.model.logit_scale.detach().exp())) < 1e-6


def test_default_model_onnx_greedy_equals_vlm_caption(default_export):
    from PIL import Image

    m = OnnxModel(default_export)
    from vlm.tokenizers import load_tokenizer

    tok = load_tokenizer(default_export / "tokenizer")
    pixels = np.stack([m.preprocess(Image.open(p)) for p in EXAMPLES])
    ours = [tok.decode(row) for row in m.greedy(pixels)]
    r = run_vlm("caption", *EXAMPLES, "--json")
    assert r.returncode == 0, r.stderr
    ref = [json.loads(line)["caption"] for line in r.stdout.splitlines()]
    assert ours == ref and len(set(ref)) == len(ref)
    # one image at a time (batch axis 1) and a short limit give the same as vlm
    pipe = vlm.load()
    one = m.greedy(pixels[1:2], max_tokens=4)
    assert one == generate(pipe.model, torch.from_numpy(pixels[1:2]), SpecialTokens.of(tok),
                           GenerationConfig(max_tokens=4))


@pytest.mark.parametrize("arch", ["coca_ViT-B-32", "ViT-B-32"])
def test_converted_layouts_match_onnxruntime(arch, tmp_path):
    pipe = _converted(arch, seed=3)
    model, tok = pipe.model, pipe.tokenizer
    result = export(pipe, "onnx", tmp_path / "x")
    m = OnnxModel(result.out)
    S = model.cfg.vision.image_size
    pixels = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert np.abs(m.encode_images(pixels.numpy()) - model.encode_image(pixels).numpy()).max() < TOL
        ids = tok(TEXTS)
        assert np.abs(m.encode_texts(ids.numpy()) - model.encode_text(ids).numpy()).max() < TOL
        emb = model.encode_image(pixels)
        assert (emb @ emb.t()).fill_diagonal_(0).abs().max() < 0.99  # non-degenerate witnesses
    if model.cfg.model_type == "clip":
        assert set(result.details["graphs"]) == {"image_encoder", "text_encoder"}
        return
    ref = generate(model, pixels, SpecialTokens.of(tok), GenerationConfig(max_tokens=12))
    assert m.greedy(pixels.numpy(), max_tokens=12) == ref
    assert len({t for row in ref for t in row}) > 5 and max(map(len, ref)) == 12
    # the end token made to win where a token of the first caption would: rows stop where vlm's stop
    with torch.no_grad():
        w = model.decoder.lm_head.weight
        w[tok.eot_id] = 1.05 * w[ref[0][4]]
    ref = generate(model, pixels, SpecialTokens.of(tok), GenerationConfig(max_tokens=12))
    export(pipe, "onnx", tmp_path / "y")
    assert OnnxModel(tmp_path / "y").greedy(pixels.numpy(), max_tokens=12) == ref
    assert len(set(map(len, ref))) > 1


def test_a_failed_export_writes_nothing(tmp_path, monkeypatch):
    import vlm.export.onnx as onnx_export

    def boom(model, tokenizer, out, source=""):
        (out / "image_encoder.onnx").write_bytes(b"half")
        raise ExportRefused("model: onnxruntime differs from PyTorch")

    monkeypatch.setattr(onnx_export, "export_onnx", boom)
    with pytest.raises(ExportRefused):
        export(vlm.load(), "onnx", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary directory


def test_a_full_out_directory_is_refused_in_python_terms_and_in_flag_terms(tmp_path):
    from vlm.errors import UsageError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UsageError) as e:
        export(vlm.load(), "onnx", tmp_path / "full")
    assert str(e.value) == f"{tmp_path / 'full'}: exists and is not an empty directory (force=True replaces it)"
    assert e.value.cli_message() == (f"--out {tmp_path / 'full'}: exists and is not an empty directory "
                                     f"(pass --force to replace it)")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_export_cli_usage_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    r = run_vlm("export", "onnx", "--out", tmp_path / "full")
    assert r.returncode == 2 and "exists and is not an empty directory" in r.stderr
    assert r.stderr.strip() == (f"vlm export: error: --out {tmp_path / 'full'}: exists and is not an empty "
                                f"directory (pass --force to replace it)")
    assert len(r.stderr.strip().splitlines()) == 1 and (tmp_path / "full" / "x").read_text() == "keep me"
    r = run_vlm("export", "tflite", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.strip() == ("vlm export: error: tflite: give a format (onnx, hf or "
                                                      "open_clip) or --list")
    r = run_vlm("export", "onnx", "no/such/model", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no/such/model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_export_list():
    r = run_vlm("export", "--list", "--json")
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert set(table) == {"clip", "coca", "classifier"} and all(set(v) == {"onnx", "hf", "open_clip"} for v in table.values())
    r = run_vlm("export", "--list", "default")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "default (coca):" and lines[1].split() == ["onnx", "ok"]
    assert "hf         refused: cannot be a transformers CLIPModel: its tokenizer is sentencepiece" in r.stdout
    assert "open_clip  refused: cannot be an open_clip model: its tokenizer is sentencepiece" in r.stdout
