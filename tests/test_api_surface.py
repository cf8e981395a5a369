"""The Python API's input rules (issue 13 items 1, 2, 3, 14, 16; issue 9 items 4, 5).

- one path or PIL image is one input; a string is never iterated; labels must be a list;
- non-image objects give ``TypeError`` naming the position, before any work;
- ``on_error="return"`` keeps the good results and reports each bad image in place;
- API messages speak in parameter names (``beams=0``), never in CLI flags (``--beams``);
- ``GenerationConfig`` is the one place for decoding options, their defaults and bounds;
- memory limits refuse what cannot fit, from the model config and the free memory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import vlm
from vlm.errors import ImageLoadError, InvalidOption, UsageError, first_line
from vlm.generation.config import GenerationConfig


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return vlm.load(str(tiny_checkpoint), device="cpu")


def test_a_single_path_or_image_is_one_input_and_strings_are_never_iterated(pipe, sample_images):
    good = str(sample_images["good"])
    (cap,) = pipe.caption(good, max_tokens=3)
    assert isinstance(cap, str)
    assert pipe.caption(Image.open(good), max_tokens=3) == [cap]
    assert pipe.caption(sample_images["good"], max_tokens=3) == [cap]  # a pathlib.Path
    assert pipe.similarity([good], "a cat").shape == (1, 1)  # one text is one column, not 5 characters
    assert pipe.similarity(good, ["a cat", "a dog"]).shape == (1, 2)
    with pytest.raises(TypeError, match="labels: expected a list of strings, got a single str"):
        pipe.classify([good], "orange star,red star")
    with pytest.raises(TypeError, match="labels: expected a list of strings"):
        pipe.label_embeddings("cat")


@pytest.mark.parametrize("bad, words", [
    (1, "images: expected a path, a PIL image or a list of them, got int"),
    (None, "got NoneType"),
    ([None], r"images\[0\]: expected a path or a PIL image, got NoneType"),
    (["ok", 3.5], r"images\[1\]: expected a path or a PIL image, got float"),
    ([np.zeros((8, 8, 3), np.uint8)], r"images\[0\]: .*ndarray \(convert an array with PIL.Image.fromarray\)"),
    (b"\x89PNG", "got bytes"),
])
def test_non_image_objects_are_a_clear_type_error(pipe, sample_images, bad, words):
    bad = [str(sample_images["good"]) if isinstance(b, str) else b for b in bad] if isinstance(bad, list) else bad
    for call in (lambda: pipe.caption(bad, max_tokens=2), lambda: pipe.classify(bad, ["a", "b"]),
                 lambda: pipe.similarity(bad, ["a"]), lambda: pipe.encode_images(bad)):
        with pytest.raises(TypeError, match=words):
            call()


def test_on_error_return_keeps_good_results_and_reports_bad_ones(pipe, sample_images):
    good, missing, trunc = str(sample_images["good"]), str(sample_images["missing"]), str(sample_images["truncated"])
    with pytest.raises(ImageLoadError, match="no such file"):
        pipe.caption([good, missing], max_tokens=3)  # the default: the first bad image raises
    pipe.batch_size = 2  # results keep their positions across batches
    try:
        caps = pipe.caption([good, missing, good, trunc, good], max_tokens=3, on_error="return")
        top = pipe.classify([missing, good], ["red", "green"], top_k=1, on_error="return")
        sim = pipe.similarity([good, trunc, good], ["a red image", "a cat"], on_error="return")
    finally:
        pipe.batch_size = 16
    assert [isinstance(c, str) for c in caps] == [True, False, True, False, True]  # a Caption is a str
    assert [type(c) for c in caps][1::2] == [ImageLoadError, ImageLoadError]
    assert caps[0] == caps[2] == caps[4]
    assert caps[1].source == missing and "no such file" in caps[1].reason
    assert caps[3].source == trunc and "truncated" in caps[3].reason
    assert isinstance(top[0], ImageLoadError) and top[1][0][0] in ("red", "green")
    assert sim.shape == (3, 2) and torch.isnan(sim[1]).all() and not torch.isnan(sim[[0, 2]]).any()
    assert torch.allclose(sim[0], sim[2])
    loaded = pipe.load_images([good, missing], on_error="return")
    assert isinstance(loaded[0], Image.Image) and isinstance(loaded[1], ImageLoadError)
    with pytest.raises(InvalidOption, match="on_error='skip': must be one of raise, return"):
        pipe.caption([good], on_error="skip")


@pytest.mark.parametrize("options, words", [
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0: must be at least 0.1"),
    (dict(repetition_penalty=-1.0), "repetition_penalty=-1.0: must be at least 0.1"),
    (dict(temperature=math.inf), "temperature=inf: must be a finite number"),
    (dict(temperature=math.nan), "temperature=nan: must be a finite number"),
    (dict(temperature=0.0), "temperature=0.0: must be at least 0.01"),
    (dict(top_p=0.9, temperature=1e-300), "temperature=1e-300: must be at least 0.01"),
    (dict(top_k=5, temperature=1e308), "temperature=1e[+]308: must be at most 100"),
    (dict(top_p=0.9, repetition_penalty=1e-300), "repetition_penalty=1e-300: must be at least 0.1"),
    (dict(repetition_penalty=10.5), "repetition_penalty=10.5: must be at most 10"),
    (dict(beams=3, length_penalty=1e308), "length_penalty=1e[+]308: must be at most 10"),
    (dict(beams=3, length_penalty=-10.5), "length_penalty=-10.5: must be at least -10"),
    (dict(top_p=0.0), "top_p=0.0: must be greater than 0"),
    (dict(top_p=1.5), "top_p=1.5: must be at most 1"),
    (dict(top_k=0), "top_k=0: must be at least 1"),
    (dict(beams=0), "beams=0: must be at least 1"),
    (dict(beams=65), "beams=65: must be at most 64"),
    (dict(max_tokens=5000), "max_tokens=5000: must be at most 1024"),
    (dict(max_tokens=2.5), "max_tokens=2.5: must be an integer"),
    (dict(min_tokens=9, max_tokens=4), "min_tokens=9: must be at most max_tokens"),
    (dict(length_penalty=math.nan), "length_penalty=nan: must be a finite number"),
    (dict(beams=3, top_p=0.9), "beams=3: beam search cannot be combined with top-p or top-k sampling"),
    (dict(seed=-1), "seed=-1: must be at least 0"),
])
def test_nonsense_generation_options_are_refused_in_api_terms(pipe, sample_images, options, words):
    with pytest.raises(InvalidOption, match=words) as e:
        pipe.caption([sample_images["good"]], **options)
    assert "--" not in str(e.value)  # API messages never quote a CLI flag
    with pytest.raises(InvalidOption, match=words):
        GenerationConfig(**options).validate()


def test_generation_config_is_taken_whole_and_length_penalty_is_reachable(pipe, sample_images):
    cfg = GenerationConfig(beams=3, max_tokens=4, length_penalty=0.0)
    assert pipe.generation_config(cfg) == cfg
    assert pipe.generation_config(cfg, length_penalty=2.0).length_penalty == 2.0
    assert pipe.generation_config(length_penalty=0.5).length_penalty == 0.5
    img = [sample_images["good"]]
    assert pipe.caption(img, cfg) == pipe.caption(img, beams=3, max_tokens=4, length_penalty=0.0)
    with pytest.raises(TypeError):
        pipe.caption(img, no_such_option=1)
    with pytest.raises(TypeError, match="config: expected a vlm.generation.GenerationConfig"):
        pipe.caption(img, {"beams": 2})


def test_api_messages_name_parameters_not_flags(pipe, tiny_checkpoint):
    for call, words in [
        (lambda: pipe.set_image_size(36), "image_size=36: must be a positive multiple of the patch size"),
        (lambda: pipe.classify(["x.png"], ["a", "b"], top_k=0), "top_k=0: must be at least 1"),
        (lambda: pipe.label_embeddings(["a"], ["no placeholder"]), "template='no placeholder': must contain {}"),
        (lambda: vlm.load(str(tiny_checkpoint), device="cuda:7" if not torch.cuda.is_available() else "nope"),
         "device="),
        (lambda: vlm.load(str(tiny_checkpoint), pretrained="laion"), "pretrained='laion': goes with an open_clip"),
        (lambda: vlm.load(str(tiny_checkpoint), batch_size=0), "batch_size=0: must be at least 1"),
    ]:
        with pytest.raises(UsageError, match=words) as e:
            call()
        assert "--" not in str(e.value), str(e.value)


def test_model_errors_name_parameters_and_the_cli_names_flags(pipe, tmp_path, monkeypatch):
    """Advice in an API error speaks Python (``vlm.load("hf:/path/to/dir")``, ``template=``); the
    same error on the command line (``cli_message()``) names the flags (issue 13 item 2)."""
    from vlm.classify.zeroshot import class_embeddings
    from vlm.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    missing = tmp_path / "x.json"
    for call, api, cli in [
        (lambda: vlm.load(f"open_clip:{missing}"), f"{missing}: no such open_clip config file", None),
        (lambda: vlm.load("hf:org/none"), 'load it with vlm.load("hf:/path/to/dir")', "pass --model hf:/path/to/dir"),
        (lambda: vlm.load("timm:org/none"), 'load it with vlm.load("timm:/path/to/dir")',
         "pass --model timm:/path/to/dir"),
        (lambda: vlm.load("open_clip:coca_ViT-B-32"), "which weights? give pretrained=TAG",
         "which weights? pass --pretrained TAG"),
        (lambda: vlm.load("open_clip:coca_ViT-B-32@laion2b_s13b_b90k"),
         'load it with vlm.load("open_clip:coca_ViT-B-32", pretrained="/path/to/open_clip_pytorch_model.bin")',
         "pass --model open_clip:coca_ViT-B-32 --pretrained /path/to/open_clip_pytorch_model.bin"),
        (lambda: class_embeddings(pipe, ["cat"], ["no slot"]), "template='no slot': must contain {} once",
         "--template 'no slot': must contain {} once"),
    ]:
        with pytest.raises((ModelError, UsageError)) as e:
            call()
        assert api in str(e.value) and "--" not in str(e.value), str(e.value)
        assert cli is None or cli in e.value.cli_message(), e.value.cli_message()


def test_labels_one_rule_blank_and_duplicate_refused_by_classify_too(pipe, sample_images):
    img = [sample_images["good"]]
    with pytest.raises(UsageError, match="label 1 of 3 is blank"):
        pipe.classify(img, ["red", " ", "green"])  # classify used to drop it silently
    with pytest.raises(UsageError, match="'red' is given twice"):
        pipe.classify(img, ["red", "green", "red "])
    with pytest.raises(UsageError, match="'red' is given twice"):
        pipe.label_embeddings(["red", "red"])
    with pytest.raises(UsageError, match="empty label list"):
        pipe.classify(img, [])
    (top,) = pipe.classify(img, [" red ", "green"], top_k=2)
    assert sorted(label for label, _ in top) == ["green", "red"]
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("template, words", [
    ("a {} {}", "found 2 replacement fields"),
    ("a {name} {}", "found 2 replacement fields"),
    ("a {} }", "Single '}'"),
    ("a {name}", "found {name}"),
    ("a {:>9}", "found {:>9}"),
])
def test_templates_need_exactly_one_plain_placeholder(pipe, template, words):
    with pytest.raises(InvalidOption, match="must contain {} once") as e:
        pipe.label_embeddings(["red"], [template])
    assert words in str(e.value)
    assert pipe.label_embeddings(["red"], ["{{literal}} {}"]).shape[0] == 1


def test_memory_limits_refuse_what_cannot_fit(pipe, tiny_checkpoint):
    from vlm.runtime.limits import MAX_IMAGE_SIZE, check_fits, inference_bytes

    cfg = pipe.model.cfg
    with pytest.raises(InvalidOption, match=f"image_size=64000: must be at most {MAX_IMAGE_SIZE}"):
        vlm.load(str(tiny_checkpoint), device="cpu", image_size=64000)
    # the estimate grows with batch x tokens and with beams; refusals name the option to change
    assert inference_bytes(cfg, 256, 8) > 4 * inference_bytes(cfg, 128, 8) * 0.9
    assert inference_bytes(cfg, 64, 8, beams=4) > inference_bytes(cfg, 64, 8)
    need = inference_bytes(cfg, 4096, 1)
    with pytest.raises(InvalidOption, match=r"image_size=4096: needs about .* is free; use a smaller image size"):
        check_fits(cfg, 4096, 1, available=need - 1)
    with pytest.raises(InvalidOption, match=r"batch_size=64: at image size 4096 needs about"):
        check_fits(cfg, 4096, 64, available=need * 2)
    with pytest.raises(InvalidOption, match=r"beams=64: with 4 images per batch at image size 64"):
        check_fits(cfg, 64, 4, beams=64, available=inference_bytes(cfg, 64, 4, beams=2))
    check_fits(cfg, 64, 4, beams=2, available=inference_bytes(cfg, 64, 4, beams=2))  # exactly fits
    with pytest.raises(InvalidOption, match="batch_size=5000: must be at most 4096"):
        check_fits(cfg, 64, 5000)


def test_first_line_of_an_exception():
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    assert first_line(ValueError()) == "ValueError"
    assert first_line(KeyError("k")) == "'k'"


def test_pretrained_is_passed_as_its_own_argument_not_baked_into_the_name(monkeypatch):
    """``vlm.load("open_clip:ARCH", pretrained=X)`` reaches the loader as an argument (the CLI's
    --pretrained); naming the weights twice is refused."""
    from vlm.convert import remote
    from vlm.errors import ModelError

    seen = {}

    def fake_open_clip(spec, tag=None, pretrained=None):
        seen.update(spec=spec, pretrained=pretrained)
        raise ModelError("stop here")

    monkeypatch.setattr(remote, "load_open_clip", fake_open_clip)
    with pytest.raises(ModelError, match="stop here"):
        vlm.load("open_clip:ViT-B-32", pretrained="/weights/x.bin", device="cpu")
    assert seen == {"spec": "ViT-B-32", "pretrained": "/weights/x.bin"}
    monkeypatch.undo()
    with pytest.raises(ModelError, match="already says which weights"):
        remote.load_open_clip("ViT-B-32@openai", pretrained="laion2b_s34b_b79k")


@pytest.fixture(scope="module")
def classifier_pipe(tmp_path_factory):
    """A saved tiny supervised classifier, loaded through vlm.load (a ClassifierPipeline)."""
    from vlm.classify.checkpoint import save_classifier
    from vlm.classify.model import ClassifierConfig, ImageClassifier
    from vlm.model.config import VisionConfig

    torch.manual_seed(0)
    vision = VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2)
    model = ImageClassifier(ClassifierConfig(labels=["orange star", "red star", "blue circle"], vision=vision))
    out = tmp_path_factory.mktemp("probe") / "probe"
    save_classifier(model, out)
    return vlm.load(str(out), device="cpu")


def test_classifier_pipeline_takes_one_path_and_never_iterates_a_string(classifier_pipe, sample_images):
    good = str(sample_images["good"])
    assert type(classifier_pipe).__name__ == "ClassifierPipeline"
    (top,) = classifier_pipe.classify(good, top_k=2)  # one path is one input, not len(good) characters
    assert len(top) == 2 and {label for label, _ in top} <= {"orange star", "red star", "blue circle"}
    assert classifier_pipe.classify(Image.open(good), top_k=2) == [top]
    assert classifier_pipe.classify(sample_images["good"], top_k=2) == [top]  # a pathlib.Path
    assert classifier_pipe.classify([good, good], top_k=2) == [top, top]
    assert classifier_pipe.logits(good).shape == (1, 3)
    with pytest.raises(TypeError, match="labels: expected a list of strings, got a single str"):
        classifier_pipe.classify([good], "orange star,red star")
    (restricted,) = classifier_pipe.classify([good], ["orange star", "red star"], top_k=5)
    assert sorted(label for label, _ in restricted) == ["orange star", "red star"]
    for bad, words in [(1, "images: expected a path, a PIL image or a list of them, got int"),
                       ([None], r"images\[0\]: expected a path or a PIL image, got NoneType")]:
        with pytest.raises(TypeError, match=words):
            classifier_pipe.classify(bad)


def test_classifier_pipeline_speaks_python_terms_and_keeps_good_results(classifier_pipe, sample_images):
    good, missing = str(sample_images["good"]), str(sample_images["missing"])
    for call, words in [
        (lambda: classifier_pipe.set_image_size(36), "image_size=36: must be a positive multiple of the patch size 8"),
        (lambda: classifier_pipe.set_image_size(64000), "image_size=64000: must be at most"),
        (lambda: classifier_pipe.classify([good], top_k=0), "top_k=0: must be at least 1"),
        (lambda: classifier_pipe.classify([good], ["no such label"]), "labels: 'no such label' is not a label"),
    ]:
        with pytest.raises(UsageError, match=words) as e:
            call()
        assert "--" not in str(e.value), str(e.value)
    with pytest.raises(ImageLoadError, match="no such file"):
        classifier_pipe.classify([good, missing])
    top = classifier_pipe.classify([missing, good], top_k=1, on_error="return")
    assert isinstance(top[0], ImageLoadError) and top[0].source == missing
    assert top[1] == classifier_pipe.classify(good, top_k=1)[0]


def test_dir_shows_the_api_and_docstrings_name_only_real_extras():
    """``dir(vlm)`` lists the lazily loaded API; no docstring or document names an install extra that
    pyproject.toml does not define (issue 18: ``help(vlm.load)`` named a `convert` extra)."""
    import pydoc
    import re
    import subprocess
    import sys
    import tomllib

    from conftest import REPO

    assert {"load", "GenerationConfig", "__version__"} <= set(dir(vlm))
    assert vlm.GenerationConfig is GenerationConfig
    light = subprocess.run([sys.executable, "-c", "import sys, vlm; dir(vlm); vlm.GenerationConfig; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=REPO)
    assert light.stdout.strip() == "False", light.stderr
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    texts = [pydoc.render_doc(vlm.load)] + [p.read_text() for p in (REPO / "vlm").rglob("*.py")]
    texts += [p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]]
    named = {m for t in texts for m in re.findall(r"`([\w-]+)` extras?\b", t)}
    named |= {e for t in texts for group in re.findall(r"\.\[([\w,-]+)\]", t) for e in group.split(",")}
    assert named <= extras, named - extras
