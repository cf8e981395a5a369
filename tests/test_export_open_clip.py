"""`vlm export open_clip`: open_clip loads the state dict + config and gives vlm's embeddings and greedy
captions; open_clip -> vlm -> open_clip is bit-exact; models open_clip cannot express are refused in one line.

open_clip models at the real layouts (coca_ViT-B-32, ViT-B-32, tiny widths, random non-degenerate weights).
Greedy captions are compared two ways: open_clip's CoCa forward driven token by token here, and open_clip's
own ``CoCa.generate`` in the reference interpreter (/work/venv-oc: open_clip 3.3's generate needs
transformers < 4.56), run as a separate process by scripts/check_export_open_clip.py; that test is skipped
with the reason where no such interpreter exists.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from conftest import REPO, run_vlm  # noqa: E402
from test_convert_open_clip import EOT, SOT, TEXTS, _open_clip_greedy, build, inputs, maxdiff  # noqa: E402

import vlm  # noqa: E402
from vlm.model.config import get_config  # noqa: E402
from vlm.export import ExportRefused, export  # noqa: E402
from vlm.export.open_clip import builtin_arch  # noqa: E402
from vlm.generation.config import GenerationConfig, SpecialTokens
from vlm.generation.decode import generate  # noqa: E402
from vlm.tokenizers.clip_bpe import CLIPBPETokenizer  # noqa: E402

TOL = 1e-4
REFERENCE_PYTHON = Path(os.environ.get("VLM_OPEN_CLIP_PYTHON", "/work/venv-oc/bin/python"))


def _export(model, out: Path, tokenizer=None):
    return export(model, "open_clip", out, tokenizer=tokenizer or CLIPBPETokenizer(), source="tiny")


@pytest.mark.parametrize("arch,quick", [("coca_ViT-B-32", False), ("ViT-B-32", False), ("ViT-B-32", True),
                                        ("coca_ViT-L-14", False)])
def test_open_clip_to_vlm_to_open_clip_is_bit_exact(arch, quick, tmp_path):
    from safetensors.torch import load_file

    oc, model, _ = build(arch, quick, seed=4)
    result = _export(model, tmp_path / "x")
    assert result.files == ["open_clip_config.json", "open_clip_model.safetensors"]
    state, ref = load_file(tmp_path / "x" / "open_clip_model.safetensors"), oc.state_dict()
    assert set(state) == set(ref)
    assert all(state[k].dtype == ref[k].dtype and torch.equal(state[k], ref[k]) for k in ref)
    config = json.loads((tmp_path / "x" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is quick


@pytest.mark.parametrize("arch", ["coca_ViT-B-32", "ViT-B-32"])
def test_open_clip_loads_the_export_and_gives_vlm_embeddings_and_captions(arch, tmp_path):
    _, model, vcfg = build(arch, seed=6)
    _export(model, tmp_path / "x")
    oc = open_clip.create_model(f"local-dir:{tmp_path / 'x'}").eval()
    images, text = inputs(vcfg, n_images=3)
    with torch.no_grad():
        assert maxdiff(oc.encode_image(images, normalize=True), model.encode_image(images)) < TOL
        assert maxdiff(oc.encode_text(text, normalize=True), model.encode_text(text)) < TOL
        assert (model.encode_image(images) @ model.encode_image(images).t()).fill_diagonal_(0).abs().max() < 0.99
        if vcfg.model_type == "coca":
            ref = _open_clip_greedy(oc, images, 12, allow_eot=True)
            ours = generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=12))
            assert ours == ref and len({t for r in ours for t in r}) > 5


def test_create_model_with_pretrained_file(tmp_path):
    """A registered model config + ``pretrained=`` the exported file, open_clip's other loading path."""
    _, model, vcfg = build("coca_ViT-B-32", seed=7)
    _export(model, tmp_path / "x")
    cfg = json.loads((tmp_path / "x" / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "vlm-export-tiny-coca.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vlm-export-tiny-coca.json")
    oc = open_clip.create_model("vlm-export-tiny-coca", pretrained=str(tmp_path / "x" / "open_clip_model.safetensors"))
    images, _ = inputs(vcfg, n_images=2)
    with torch.no_grad():
        assert maxdiff(oc.eval().encode_image(images, normalize=True), model.encode_image(images)) < TOL
    # a model at a built-in architecture is named, so create_model(ARCH, pretrained=FILE) needs no config
    assert builtin_arch(get_config("coca_ViT-B-32")) == "coca_ViT-B-32"
    assert builtin_arch(get_config("ViT-B-16")) == "ViT-B-16" and builtin_arch(vcfg) is None


def _tiny_coca(**changes):
    from parity_weights import randomize_
    from vlm.model.coca import create_model

    cfg = get_config("tiny")
    cfg.text.cls_mask = "legacy"
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    cfg.validate()
    return randomize_(create_model(cfg)).eval()


@pytest.mark.parametrize("case,reason", [
    ("sentencepiece", "its tokenizer is sentencepiece; open_clip's model configs name CLIP's byte-level BPE"),
    ("cls_mask", "masks padding from the CLS token the corrected way"),
    ("token_width", "its image tokens are 32 wide and the decoder 64"),
    ("activations", "its towers use different activations ['gelu', 'quick_gelu']"),
])
def test_models_open_clip_cannot_express_are_refused(case, reason, tmp_path):
    if case == "sentencepiece":
        target, tok = vlm.load(), None
    elif case == "cls_mask":
        target, tok = _tiny_coca(text__cls_mask="correct"), CLIPBPETokenizer()
    elif case == "token_width":
        target, tok = _tiny_coca(text__width=64, decoder__width=64, text__heads=2), CLIPBPETokenizer()
    else:
        target, tok = _tiny_coca(vision__act="quick_gelu"), CLIPBPETokenizer()
    with pytest.raises(ExportRefused) as e:
        export(target, "open_clip", tmp_path / "out", tokenizer=tok)
    assert reason in str(e.value) and "\n" not in str(e.value) and "cannot be an open_clip model: " in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_export_open_clip_cli(tmp_path):
    from vlm.io.checkpoint import save_pretrained

    _, model, _ = build("coca_ViT-B-32", seed=8)
    save_pretrained(model, tmp_path / "ckpt", tokenizer=CLIPBPETokenizer(context_length=model.cfg.text.context_length))
    r = run_vlm("export", "open_clip", tmp_path / "ckpt", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'out'}: open_clip (open_clip_config.json, open_clip_model.safetensors)"
    r = run_vlm("export", "open_clip", "--out", tmp_path / "refused")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("vlm export: error: default: cannot be an open_clip model: its tokenizer is sentencepiece")
    assert not (tmp_path / "refused").exists()


def _reference_python() -> Path:
    if not REFERENCE_PYTHON.is_file():
        pytest.skip(f"open_clip's CoCa.generate needs transformers < 4.56: no reference interpreter at "
                    f"{REFERENCE_PYTHON} (set VLM_OPEN_CLIP_PYTHON)")
    return REFERENCE_PYTHON


def test_open_clip_generate_in_the_reference_env_gives_vlm_greedy_tokens(tmp_path):
    from safetensors.torch import save_file

    python = _reference_python()
    _, model, vcfg = build("coca_ViT-B-32", seed=3)
    _export(model, tmp_path / "x")
    images, _ = inputs(vcfg, n_images=3)
    save_file({"images": images.contiguous()}, tmp_path / "inputs.safetensors")
    n = 10
    r = subprocess.run([str(python), str(REPO / "scripts" / "check_export_open_clip.py"), str(tmp_path / "x"),
                        str(tmp_path / "inputs.safetensors"), "--tokens", str(n)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    ours = generate(model, images, SpecialTokens(SOT, EOT, 0), GenerationConfig(max_tokens=n, min_tokens=n))
    # open_clip forces the last of its fixed-length tokens to be end-of-text; the n - 1 before it are compared
    assert [row[: n - 1] for row in ref["tokens"]] == [row[: n - 1] for row in ours]
    assert len({t for row in ours for t in row}) > 5
    with torch.no_grad():
        assert maxdiff(torch.tensor(ref["image_embeds"]), model.encode_image(images)) < TOL
