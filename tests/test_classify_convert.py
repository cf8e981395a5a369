"""timm and transformers ViT classifiers imported exactly: random weights at the real ViT-B/16
layout, written by the libraries' own writers, give the same logits (1e-4) and top-5, with the
same preprocessing; labels come from the checkpoint or timm's ImageNet metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_vlm


def _images():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    return [Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)),
            Image.fromarray(smooth[:256, :200]), Image.fromarray(smooth)]


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    model = _perturb(timm.create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=False))
    out = tmp_path_factory.mktemp("timm") / "vit_b16"
    save_for_hf(model, str(out), safe_serialization=True)  # config.json + model.safetensors, as on the Hub
    return model, out


@pytest.fixture(scope="module")
def timm_tiny_dir(tmp_path_factory):
    """A small member of the same family for the CLI runs (ViT-Ti/16: 5.7M parameters)."""
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    model = _perturb(timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False))
    out = tmp_path_factory.mktemp("timm") / "vit_ti16"
    save_for_hf(model, str(out), safe_serialization=True)
    return model, out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    cfg = tf.ViTConfig(num_labels=1000, id2label={i: f"label {i}" for i in range(1000)},
                       label2id={f"label {i}": i for i in range(1000)})
    torch.manual_seed(0)
    model = _perturb(tf.ViTForImageClassification(cfg))
    out = tmp_path_factory.mktemp("hf") / "vit_b16"
    model.save_pretrained(out)
    tf.ViTImageProcessor().save_pretrained(out)
    return model, out


def test_timm_vit_b16_logits_top5_preprocessing_labels(timm_dir):
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    from vlm.convert.timm import convert_timm_dir
    from vlm.io.images import PreprocessConfig, preprocess_batch

    ref, path = timm_dir
    ours = convert_timm_dir(path)
    images = _images()
    x_ref = torch.stack([create_transform(**resolve_data_config({}, model=ref))(im) for im in images])
    x_ours = preprocess_batch(images, PreprocessConfig.for_model(ours.cfg))
    assert torch.equal(x_ref, x_ours)  # Resize(248) + CenterCrop(224), crop_pct 0.9, bicubic, mean/std 0.5
    with torch.no_grad():
        a, b = ref(x_ref), ours(x_ours).logits
    assert a.std() > 0.1  # non-degenerate logits
    assert (a - b).abs().max() < 1e-4
    assert torch.equal(a.topk(5).indices, b.topk(5).indices)
    info = ImageNetInfo()
    assert ours.labels[0] == info.index_to_description(0).split(",")[0] == "tench"
    assert len(set(ours.labels)) == 1000  # the two "crane"s are told apart by their synset ids
    assert ours.labels[134] == f"crane ({info.index_to_label_name(134)})"


def test_hf_vit_for_image_classification_logits_top5_preprocessing(hf_dir):
    from transformers.models.vit import ViTImageProcessor, ViTImageProcessorPil

    from vlm.convert.hf import convert_hf_dir
    from vlm.io.images import PreprocessConfig, preprocess_batch

    ref, path = hf_dir
    ours, tokenizer = convert_hf_dir(path)
    assert tokenizer is None and ours.labels[:2] == ["label 0", "label 1"]
    images = _images()
    x_ours = preprocess_batch(images, PreprocessConfig.for_model(ours.cfg))
    x_pil = ViTImageProcessorPil.from_pretrained(path)(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(x_pil, x_ours)  # the PIL image processor: squash to 224, bilinear, rescale, normalise
    x_tv = ViTImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")["pixel_values"]
    assert (x_tv - x_ours).abs().max() <= 2 / 255 + 1e-6  # torchvision backend: at most one 8-bit level off
    with torch.no_grad():
        a, b = ref(pixel_values=x_ours).logits, ours(x_ours).logits
    assert a.std() > 0.1
    assert (a - b).abs().max() < 1e-4
    assert torch.equal(a.topk(5).indices, b.topk(5).indices)


def test_convert_and_classify_cli_without_labels(timm_tiny_dir, tmp_path):
    from vlm.convert.timm import convert_timm_dir
    from vlm.io.images import PreprocessConfig, preprocess_batch

    ref, path = timm_tiny_dir
    img = tmp_path / "a.png"
    _images()[1].save(img)
    out = tmp_path / "ck"
    r = run_vlm("convert", "timm", path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "classifier"
    r = run_vlm("classify", img, tmp_path / "missing.png", "--model", out, "--top-k", "5", "--json")
    assert r.returncode == 1  # one input failed, the other classified
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert "error" in rows[1] and len(r.stderr.strip().splitlines()) == 1
    model = convert_timm_dir(path)
    with torch.no_grad():
        want = ref(preprocess_batch([Image.open(img).convert("RGB")], PreprocessConfig.for_model(model.cfg)))
    top = want.softmax(-1)[0].topk(5)
    assert [t["label"] for t in rows[0]["top"]] == [model.labels[i] for i in top.indices.tolist()]
    assert np.allclose([t["prob"] for t in rows[0]["top"]], top.values.tolist(), atol=1e-5)
    # labels that are not the checkpoint's: one line, exit 2
    r = run_vlm("classify", img, "--model", out, "--labels", "tench,not a class")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "'not a class' is not a label of the classifier" in r.stderr
    import vlm

    pipe = vlm.load(str(out))
    top = pipe.classify([img], ["tench", "goldfish"], top_k=3)[0]  # restricted to those two labels
    assert [lb for lb, _ in top] in (["tench", "goldfish"], ["goldfish", "tench"])
    assert abs(sum(p for _, p in top) - 1) < 1e-5


def test_remote_names_offline_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for name in ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", "hf:google/vit-base-patch16-224"):
        r = run_vlm("classify", tmp_path / "x.png", "--model", name, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "could not download (offline?)" in r.stderr and "Traceback" not in r.stderr


def test_zero_shot_model_still_needs_labels(sample_images):
    r = run_vlm("classify", sample_images["good"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--labels or --labels-file is required" in r.stderr
