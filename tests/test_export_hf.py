"""`vlm export hf`: the directory loads as a transformers CLIPModel + CLIPProcessor and gives vlm's cosine
matrix (within 1e-4) and, through pipeline("zero-shot-image-classification"), vlm's classify probabilities;
models a CLIPModel cannot express are refused in one line, a CoCa's caption decoder is left out with a note.

Models: ViT-B-32's layout at tiny width with random non-degenerate weights, and a CoCa whose towers are
CLIP-shaped (a CLIP with a caption decoder added, as docs/training.md trains one).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import run_vlm, shrink  # noqa: E402

import vlm  # noqa: E402
from vlm.api import Pipeline  # noqa: E402
from vlm.model.config import DecoderConfig, get_config  # noqa: E402
from vlm.export import ExportRefused, export  # noqa: E402

TOL = 1e-4
TEXTS = ["a red square", "a photo of noise", "two dogs playing in the snow", ""]
LABELS = ["cat", "dog", "red square", "noise"]


def _pipeline(cfg, seed=0):
    from parity_weights import randomize_
    from vlm.io.images import PreprocessConfig
    from vlm.model.coca import create_model
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.manual_seed(seed)
    model = randomize_(create_model(cfg), seed=seed).eval()
    tok = CLIPBPETokenizer(context_length=cfg.text.context_length)
    return Pipeline(model, tok, PreprocessConfig.for_model(cfg), torch.device("cpu"), name="tiny-clip")


def _clip_cfg(coca: bool = False):
    cfg = shrink(get_config("ViT-B-32"), vocab=49408)
    cfg.vision.image_size = 64
    if coca:  # CLIP towers + a caption decoder reading the CLS-pooled ViT's tokens
        cfg.model_type = "coca"
        cfg.decoder = DecoderConfig(vocab_size=49408, context_length=cfg.text.context_length - 1, width=32,
                                    layers=1, heads=2)
    cfg.validate()
    return cfg


def _images():
    from PIL import Image

    rs = np.random.RandomState(0)
    return [Image.new("RGB", (64, 64), (200, 30, 30)),
            Image.fromarray(rs.randint(0, 255, (64, 64, 3), dtype=np.uint8)),
            Image.fromarray(rs.randint(0, 255, (96, 64, 3), dtype=np.uint8)),  # resized and cropped
            Image.fromarray(rs.randint(0, 255, (50, 70, 3), dtype=np.uint8))]


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    pipe = _pipeline(_clip_cfg())
    result = export(pipe, "hf", tmp_path_factory.mktemp("hf") / "clip")
    return pipe, result


def test_clip_model_gives_vlm_cosines(clip_export):
    from transformers import CLIPModel, CLIPProcessor

    pipe, result = clip_export
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(result.files)
    hf = CLIPModel.from_pretrained(result.out).eval()
    images = _images()
    ref = pipe.similarity(images, TEXTS)
    assert ref.std() > 0.05  # non-degenerate witnesses
    # transformers' PIL backend resizes as vlm does: every image; its default (torchvision) backend
    # resizes differently, so with it only images already at the model's size give the same pixels.
    for backend, n in (("pil", len(images)), (None, 2)):
        processor = CLIPProcessor.from_pretrained(result.out, **({"backend": backend} if backend else {}))
        with torch.no_grad():
            inputs = processor(text=TEXTS, images=images[:n], return_tensors="pt", padding=True)
            out = hf(**inputs)
        assert (inputs["pixel_values"] - pipe.images_to_tensor(images[:n])).abs().max() < 1e-5
        assert (out.image_embeds @ out.text_embeds.t() - ref[:n]).abs().max() < TOL
    assert abs(hf.logit_scale.exp().item() - pipe.model.logit_scale.exp().item()) < 1e-5


def test_zero_shot_pipeline_gives_vlm_classify_probabilities(clip_export):
    from transformers import AutoImageProcessor, pipeline

    pipe, result = clip_export
    images = _images()
    template = "a photo of a {}."
    ours = pipe.classify(images, LABELS, templates=[template], top_k=len(LABELS))
    pil = AutoImageProcessor.from_pretrained(result.out, backend="pil")
    for zs, n in ((pipeline("zero-shot-image-classification", model=str(result.out), image_processor=pil), 4),
                  (pipeline("zero-shot-image-classification", model=str(result.out)), 2)):
        theirs = zs(images[:n], candidate_labels=LABELS, hypothesis_template=template)
        for t, o in zip(theirs, ours[:n]):
            assert [d["label"] for d in t] == [label for label, _ in o]
            assert max(abs(d["score"] - p) for d, (_, p) in zip(t, o)) < TOL
    assert max(p for _, p in ours[0]) - min(p for _, p in ours[0]) > 0.05


def test_hf_export_round_trips_through_vlm_convert(clip_export):
    from vlm.convert.hf import convert_hf_dir

    pipe, result = clip_export
    back, tok = convert_hf_dir(result.out)
    mine = pipe.model.state_dict()
    assert set(back.state_dict()) == set(mine)
    assert all(torch.equal(v, mine[k]) for k, v in back.state_dict().items())
    assert back.cfg.preprocess.crop_rounding == "floor"  # what transformers does, said in the export's note
    assert result.notes and "rounds center-crop offsets down" in result.notes[0]


def test_coca_towers_export_with_a_note_about_the_decoder(tmp_path):
    from transformers import CLIPModel

    pipe = _pipeline(_clip_cfg(coca=True), seed=1)
    result = export(pipe, "hf", tmp_path / "coca")
    assert any("caption decoder is left out" in n for n in result.notes)
    hf = CLIPModel.from_pretrained(result.out).eval()
    images = _images()[:2]
    with torch.no_grad():
        emb = hf.get_image_features(pixel_values=pipe.images_to_tensor(images))
        emb = getattr(emb, "pooler_output", emb)
    assert (torch.nn.functional.normalize(emb, dim=-1) - pipe.encode_images(images)).abs().max() < TOL


@pytest.mark.parametrize("case,reason", [
    ("sentencepiece", "its tokenizer is sentencepiece, and CLIPModel's CLIPTokenizer is CLIP's byte-level BPE"),
    ("attn_pool", "the image tower ends in an attentional pooler (CoCa), and CLIPModel pools the CLS token"),
    ("cls_text", "the text tower pools an appended CLS token (CoCa), and CLIPModel pools at the end-of-text token"),
    ("longest", "its preprocessing pads the long side (resize_mode 'longest')"),
])
def test_models_a_clip_model_cannot_express_are_refused(case, reason, tmp_path):
    if case == "sentencepiece":
        pipe = vlm.load()
    else:
        cfg = _clip_cfg(coca=case == "attn_pool")
        if case == "attn_pool":
            cfg = copy.deepcopy(get_config("tiny"))
        elif case == "cls_text":
            cfg.text.pool = "cls"
        else:
            cfg.preprocess.resize_mode = "longest"
        pipe = _pipeline(cfg)
    with pytest.raises(ExportRefused) as e:
        export(pipe, "hf", tmp_path / "out")
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{pipe.name}: cannot be a transformers CLIPModel: ")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_export_hf_cli(tmp_path):
    from vlm.io.checkpoint import save_pretrained

    pipe = _pipeline(_clip_cfg(coca=True), seed=2)
    save_pretrained(pipe.model, tmp_path / "ckpt", tokenizer=pipe.tokenizer)
    r = run_vlm("export", "hf", tmp_path / "ckpt", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'out'}: hf (") and "model.safetensors" in r.stdout
    assert "vlm export: note: the caption decoder is left out" in r.stderr
    r = run_vlm("export", "hf", "--out", tmp_path / "refused")
    assert r.returncode == 2 and r.stderr.strip() == (
        "vlm export: error: default: cannot be a transformers CLIPModel: its tokenizer is sentencepiece, "
        "and CLIPModel's CLIPTokenizer is CLIP's byte-level BPE")
    assert not (tmp_path / "refused").exists()
