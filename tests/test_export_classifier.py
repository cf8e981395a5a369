"""Supervised classifiers (vlm.classify) export to a transformers ViTForImageClassification (same logits,
and pipeline("image-classification") gives vlm classify's probabilities) and to ONNX (same logits under
onnxruntime); open_clip refuses them in one line, as does ViT for a CLIP-backbone classifier (ln_pre).

Models: a timm-style ViT classifier (no ln_pre, patch bias, resize 1/0.875 then crop) at tiny width with
random weights, and a classifier on a CLIP image tower.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import run_vlm, shrink  # noqa: E402

from vlm.classify.model import ClassifierConfig, ImageClassifier, classifier_from_backbone  # noqa: E402
from vlm.classify.pipeline import ClassifierPipeline  # noqa: E402
from vlm.model.config import PreprocessSpec, VisionConfig, get_config  # noqa: E402
from vlm.export import ExportRefused, export  # noqa: E402
from vlm.io.images import PreprocessConfig  # noqa: E402

TOL = 1e-4
LABELS = ["tabby cat", "golden retriever", "red fox", "snowy owl", "sports car"]


def _timm_style(seed=0) -> ClassifierPipeline:
    from parity_weights import randomize_

    vision = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, norm_eps=1e-6, norm_pre=False,
                          patch_bias=True)
    pre = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="shortest",
                         interpolation="bicubic", crop_rounding="floor", crop_pct=0.875)
    torch.manual_seed(seed)
    model = randomize_(ImageClassifier(ClassifierConfig(labels=LABELS, vision=vision, preprocess=pre)), seed=seed)
    return ClassifierPipeline(model.eval(), PreprocessConfig.for_model(model.cfg), torch.device("cpu"), "tiny-vit")


def _images():
    from PIL import Image

    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((36, 36), (50, 40), (40, 64))]


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory):
    pipe = _timm_style()
    return pipe, export(pipe, "hf", tmp_path_factory.mktemp("vit") / "out")


def test_vit_for_image_classification_gives_vlm_logits_and_probabilities(vit_export):
    from transformers import AutoImageProcessor, ViTForImageClassification, pipeline

    pipe, result = vit_export
    hf = ViTForImageClassification.from_pretrained(result.out).eval()
    assert [hf.config.id2label[i] for i in range(len(LABELS))] == LABELS
    images = _images()
    processor = AutoImageProcessor.from_pretrained(result.out, backend="pil")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert (pixels - pipe.images_to_tensor(images)).abs().max() < 1e-5  # resize 36, crop 32, as vlm does
    with torch.no_grad():
        logits = hf(pixel_values=pixels).logits
    ref = pipe.logits(images)
    assert (logits - ref).abs().max() < TOL and ref.std() > 0.1
    theirs = pipeline("image-classification", model=str(result.out), image_processor=processor)(images, top_k=3)
    ours = pipe.classify(images, top_k=3)
    for t, o in zip(theirs, ours):
        assert [d["label"] for d in t] == [label for label, _ in o]
        assert max(abs(d["score"] - p) for d, (_, p) in zip(t, o)) < TOL


def test_vit_export_weights_round_trip_through_vlm_import(vit_export):
    """The weights file read back by vlm's ViT importer is bit-exact (the whole directory is not: the
    importer takes resize-then-crop processors only when the resize equals the crop, crop_pct 1)."""
    import json

    from vlm.convert.hf_vit import convert_hf_vit_state, labels_from_hf
    from vlm.convert.state_io import load_state_file

    pipe, result = vit_export
    back = convert_hf_vit_state(load_state_file(result.out / "model.safetensors"), "export")
    mine = pipe.model.state_dict()
    assert set(back) == set(mine) and all(torch.equal(back[k], mine[k]) for k in mine)
    assert labels_from_hf(json.loads((result.out / "config.json").read_text()), len(LABELS), "export") == LABELS


def test_classifier_onnx_logits(tmp_path):
    from vlm.export.onnx_runtime import OnnxModel

    pipe = _timm_style(seed=1)
    result = export(pipe, "onnx", tmp_path / "x")
    m = OnnxModel(result.out)
    assert m.manifest["labels"] == LABELS and set(m.manifest["graphs"]) == {"classifier"}
    images = _images()
    pixels = np.stack([m.preprocess(im) for im in images])
    assert np.abs(pixels - pipe.images_to_tensor(images).numpy()).max() < 1e-6
    assert np.abs(m.logits(pixels) - pipe.logits(images).numpy()).max() < TOL


def test_classifiers_refused_where_the_format_cannot_hold_them(tmp_path):
    from vlm.model.coca import create_model

    with pytest.raises(ExportRefused, match="tiny-vit: cannot be an open_clip model: a supervised classifier"):
        export(_timm_style(), "open_clip", tmp_path / "a")
    clip = create_model(shrink(get_config("ViT-B-32")))
    on_clip = classifier_from_backbone(clip, LABELS)
    with pytest.raises(ExportRefused, match="cannot be a transformers ViTForImageClassification: the backbone has "
                                            "CLIP's LayerNorm before the blocks"):
        export(on_clip, "hf", tmp_path / "b")
    with pytest.raises(ExportRefused, match="the head reads the L2-normalised contrastive embedding"):
        export(classifier_from_backbone(clip, LABELS, feature="embedding"), "hf", tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_export_classifier_cli(tmp_path):
    from vlm.classify.checkpoint import save_classifier

    pipe = _timm_style(seed=2)
    save_classifier(pipe.model, tmp_path / "ckpt")
    r = run_vlm("export", "hf", tmp_path / "ckpt", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'out'}: hf (") and "preprocessor_config.json" in r.stdout
    r = run_vlm("export", "--list", tmp_path / "ckpt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split() == ["onnx", "ok"] and "hf         ok" in r.stdout
