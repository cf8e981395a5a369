"""``vlm evaluate`` end to end on a tiny model and a tiny shapes set, plus the shapes attribute check.

Run: ``pytest tests/test_evaluate.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vlm.evaluation.shapes_check import named_attributes, shapes_attribute_accuracy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, shapes dir): a random tiny CoCa with a SentencePiece vocabulary."""
    from vlm.io.checkpoint import save_pretrained
    from vlm.model.config import get_config
    from vlm.data.shapes_dir import generate_shapes
    from vlm.model.coca import create_model
    from vlm.tokenizers import train_sentencepiece

    base = tmp_path_factory.mktemp("eval")
    data = generate_shapes(base / "shapes", 12, seed=5)
    refs = json.loads((data / "annotations" / "captions.json").read_text())["annotations"]
    tok = train_sentencepiece([a["caption"] for a in refs] * 4, base / "tok", vocab_size=64,
                              model_type="bpe", context_length=32)
    cfg = get_config("tiny")
    cfg.text.vocab_size = cfg.decoder.vocab_size = 64
    save_pretrained(create_model(cfg), base / "model", tok, extra={"zero_shot_templates": ["one {}"]})
    return base / "model", data


def run_vlm(*args: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vlm.cli.main", "evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def test_evaluate_json_has_every_metric(tiny):
    model, data = tiny
    r = run_vlm("--model", str(model), "--data", str(data), "--json", "--no-spice", "--no-meteor",
                "--max-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["num_images"] == 12 and report["skipped_images"] == 0
    # METEOR (about a minute of Java start-up) is covered by tests/test_metrics.py
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert 0.0 <= report["captioning"][key] <= 10.0, key
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert 0.0 <= report["retrieval"][key] <= 1.0, key
    assert report["retrieval"]["i2t_r10"] >= report["retrieval"]["i2t_r1"]
    labels = json.loads((data / "classes.json").read_text())["labels"]
    assert report["zero_shot"]["num_images"] == len(labels) > 0
    assert {"top1", "top5"} <= set(report["zero_shot"])
    assert report["shapes_single_object_images"] == len(labels)
    assert 0.0 <= report["shapes_attribute_accuracy"] <= 1.0
    assert "METEOR skipped: switched off" in report["notes"] and "SPICE skipped: switched off" in report["notes"]


def test_evaluate_counts_missing_images_and_rejects_bad_data(tiny, tmp_path, capsys):
    from vlm.cli.main import main

    model, data = tiny
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "images" / "000002.png").unlink()
    (broken / "images" / "000003.png").write_bytes(b"not a png")
    assert main(["evaluate", "--model", str(model), "--data", str(broken), "--json", "--no-spice",
                 "--no-meteor", "--max-tokens", "4", "--max-images", "6"]) == 1  # some inputs failed (issue 13.17)
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["num_images"] == 4 and out["skipped_images"] == 2
    assert "2 of 6 images could not be read" in captured.err
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlm evaluate: error: --data") and "no such directory" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "empty")]) == 2
    assert "not a COCO-format dataset" in capsys.readouterr().err


def test_shapes_attribute_accuracy_by_hand():
    objects = {1: [{"color": "red", "shape": "star"}], 2: [{"color": "blue", "shape": "circle"}],
               3: [{"color": "green", "shape": "square"}], 4: [{"color": "red", "shape": "star"},
                                                              {"color": "blue", "shape": "square"}]}
    captions = {1: "a small red star in the top left of the image",  # right
                2: "a blue square",  # wrong shape
                3: "a green square and a red circle",  # names an extra color and shape
                4: "anything"}  # two objects: not counted
    acc, n = shapes_attribute_accuracy(captions, objects)
    assert n == 3 and acc == pytest.approx(1 / 3)
    assert named_attributes("two orange circles on a striped background") == ({"orange"}, {"circle"})


# ---------------------------------------------------------------- a pipeline whose every output is known

COLORS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 30),
          "purple": (140, 30, 160), "white": (250, 250, 250), "black": (5, 5, 5)}
NAMES = list(COLORS)


def _refs(name: str) -> list[str]:
    return [f"a {name} square on a plain background", f"the only thing here is {name}"]


@pytest.fixture()
def known(tmp_path):
    """A COCO-format dir of one-color images (ids 1..7; 4 is missing; 6 has no label) and its classes.json,
    whose class order differs from the image order."""
    from PIL import Image

    root = tmp_path / "known"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for image_id, name in enumerate(NAMES, start=1):
        if image_id != 4:
            Image.new("RGB", (40, 30), COLORS[name]).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 40, "height": 30})
        anns += [{"id": 10 * image_id + k, "image_id": image_id, "caption": c}
                 for k, c in enumerate(_refs(name))]
    (root / "annotations" / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    classes = NAMES[3:] + NAMES[:3]
    labels = {str(i): classes.index(name) for i, name in enumerate(NAMES, start=1) if i != 6}
    (root / "classes.json").write_text(json.dumps({"classes": classes, "templates": ["a {} thing"],
                                                   "labels": labels}))
    return root


class KnownPipeline:
    """Image of color k -> one-hot k + one-hot (K + k); a reference of color k -> one-hot k; class "color k"
    -> one-hot (K + k); the caption of an image of color k is its first reference. Every retrieval and
    zero-shot answer is right and every caption matches a reference, if evaluate_model wires them right."""

    can_caption = True
    device = "cpu"
    lexicon = None

    def __init__(self):
        import torch

        from vlm.io.images import PreprocessConfig, preprocess_batch
        from PIL import Image

        self.preprocess_cfg = PreprocessConfig(image_size=16)
        self.input_dtype = torch.float32  # the pipeline interface evaluate_model reads (a bf16 model takes bfloat16)
        self._pixels = preprocess_batch([Image.new("RGB", (8, 8), c) for c in COLORS.values()],
                                        self.preprocess_cfg).mean(dim=(2, 3))  # (K, 3)
        self._eye = torch.eye(2 * len(NAMES))
        self.model = self
        self.tokenizer = types.SimpleNamespace(sot_id=0, eot_id=1, pad_id=2,
                                               decode=lambda row: _refs(NAMES[int(row[0])])[0] + " ")

    def color_of(self, x):
        return (x.mean(dim=(2, 3))[:, None] - self._pixels[None]).abs().sum(-1).argmin(dim=1)  # (B,)

    def encode_image(self, x):
        k = self.color_of(x)
        return self._eye[k] + self._eye[k + len(NAMES)]

    def encode_texts(self, texts):
        return self._eye[[next(k for k, n in enumerate(NAMES) if t in _refs(n)) for t in texts]]

    def label_embeddings(self, labels, templates):
        self.templates_used = templates
        return self._eye[[len(NAMES) + NAMES.index(label) for label in labels]]

    def generation_config(self, beams, max_tokens):
        return types.SimpleNamespace(beams=beams, max_tokens=max_tokens)


def test_evaluate_model_wires_retrieval_zero_shot_and_references(known, monkeypatch):
    """Retrieval, zero-shot labels and caption references line up with their images (across batches
    and a skipped image): a known pipeline scores exactly 1 on each."""
    from vlm.evaluation.evaluate import evaluate_model

    pipe = KnownPipeline()
    monkeypatch.setattr("vlm.generation.decode.generate", lambda model, x, *a, **kw: model.color_of(x)[:, None])
    report = evaluate_model(pipe, known, batch_size=4, spice=False, meteor=False)
    assert report["num_images"] == 6 and report["skipped_images"] == 1
    r = report["retrieval"]
    assert (r["i2t_r1"], r["t2i_r1"], r["i2t_mean_rank"], r["t2i_mean_rank"]) == (1.0, 1.0, 1.0, 1.0)
    z = report["zero_shot"]
    assert (z["top1"], z["num_images"], z["num_classes"]) == (1.0, 5, 7)  # 4 is missing, 6 unlabelled
    assert report["captioning"]["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert [(e["image_id"], e["caption"], e["reference"]) for e in report["examples"]] == \
        [(i, _refs(NAMES[i - 1])[0], _refs(NAMES[i - 1])[0]) for i in (1, 2, 3, 5, 6)]
    assert pipe.templates_used == ["a {} thing"]


def test_zero_shot_without_templates_or_labelled_images(known, monkeypatch):
    """No "templates" in classes.json: the model's own templates (None); labels of images that are
    not evaluated: zero-shot is skipped with a note, not silently."""
    from vlm.evaluation.evaluate import evaluate_model

    monkeypatch.setattr("vlm.generation.decode.generate", lambda model, x, *a, **kw: model.color_of(x)[:, None])
    classes = json.loads((known / "classes.json").read_text())
    (known / "classes.json").write_text(json.dumps({"classes": classes["classes"], "labels": classes["labels"]}))
    pipe = KnownPipeline()
    report = evaluate_model(pipe, known, spice=False, meteor=False)
    assert pipe.templates_used is None and report["zero_shot"]["top1"] == 1.0
    (known / "classes.json").write_text(json.dumps({"classes": classes["classes"], "labels": {"99": 0}}))
    report = evaluate_model(KnownPipeline(), known, spice=False, meteor=False)
    assert "zero_shot" not in report
    assert "zero-shot skipped: classes.json labels none of the evaluated images" in report["notes"]


def test_shapes_check_is_a_metric_the_caller_opts_into(known, tiny, monkeypatch):
    """The general evaluator knows nothing of shapes: a check passed in adds its entries and its
    line; ``shapes_checks`` gives one for a `vlm data shapes` dir only."""
    from vlm.evaluation.evaluate import evaluate_model, format_report
    from vlm.evaluation.shapes_check import ShapesAttributeCheck, shapes_checks

    monkeypatch.setattr("vlm.generation.decode.generate", lambda model, x, *a, **kw: model.color_of(x)[:, None])
    plain = evaluate_model(KnownPipeline(), known, spice=False, meteor=False)
    assert not any(k.startswith("shapes") for k in plain) and "shapes" not in format_report(plain)
    assert shapes_checks(known) == [] and len(shapes_checks(tiny[1])) == 1
    objects = {i: [{"color": name, "shape": "square"}] for i, name in enumerate(NAMES, start=1)}
    checks = [ShapesAttributeCheck(objects)]
    report = evaluate_model(KnownPipeline(), known, spice=False, meteor=False, checks=checks)
    # images 1, 2, 3, 5 are red, green, blue, purple squares; 6 and 7 (white, black) name no shapes color
    assert report["shapes_single_object_images"] == 6
    assert report["shapes_attribute_accuracy"] == pytest.approx(4 / 6)
    assert "shapes attribute accuracy (6 single-object images): 0.6667" in format_report(report, checks)
    assert "shapes" not in format_report(report)


# ---------------------------------------------------------------- bad inputs: one line before any work


@pytest.mark.parametrize("content, reason", [
    ({"classes": []}, '"classes" is empty'),
    ({"classes": "red"}, 'needs a "classes" list'),
    ({"classes": ["red", " "]}, "class 1 (' '): must be a non-empty name"),
    ({"classes": ["red", "blue", "red"]}, "class 2 ('red'): repeats class 0"),
    ({"classes": ["red"], "templates": ["one {} {size}"]}, "template 'one {} {size}': cannot be filled"),
    ({"classes": ["red"], "templates": ["a photo"]}, "template 'a photo': needs exactly one {}"),
    ({"classes": ["red"], "templates": ["{} and {}"]}, "template '{} and {}': needs exactly one {}"),
    ({"classes": ["red", "blue"], "labels": {"1": 2}}, "label of image 1: 2 is not a class index 0..1"),
    ({"classes": ["red", "blue"], "labels": {"1": -1}}, "label of image 1: -1 is not a class index 0..1"),
    ({"classes": ["red"], "labels": {"one": 0}}, "labels: 'one' is not an image id"),
])
def test_bad_classes_json_is_one_line_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch, content,
                                                             reason):
    import vlm.cli.evaluate
    from vlm.cli.main import main

    _, data = tiny
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "classes.json").write_text(json.dumps(content))
    monkeypatch.setattr(vlm.cli.evaluate, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    assert main(["evaluate", "--data", str(bad), "--no-spice", "--no-meteor"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vlm evaluate: error: {bad / 'classes.json'}: " + err.split(": ", 3)[-1]
    assert reason in err and "\n" not in err


def test_split_names_the_layout_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    import vlm.cli.evaluate
    from vlm.cli.main import main

    _, data = tiny
    monkeypatch.setattr(vlm.cli.evaluate, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    assert main(["evaluate", "--data", str(data), "--split", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vlm evaluate: error: --split nonsense: {data} has one annotations/captions.json "
                   f"(no splits): leave the split out")
    karpathy = tmp_path / "coco"
    karpathy.mkdir()
    (karpathy / "dataset_coco.json").write_text(json.dumps({"images": []}))
    assert main(["evaluate", "--data", str(karpathy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlm evaluate: error: --data {karpathy}: ") and "choose one" in err
    assert main(["evaluate", "--data", str(karpathy), "--split", "dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlm evaluate: error: --split dev: ") and "not 'dev'" in err and "\n" not in err


def test_label_embeddings_reject_a_blank_label(tiny):
    import vlm
    from vlm.errors import UsageError

    pipe = vlm.load(str(tiny[0]), device="cpu")
    assert pipe.label_embeddings(["red star", "blue circle"]).shape[0] == 2
    with pytest.raises(UsageError, match="label 1 of 3 is blank"):
        pipe.label_embeddings(["red star", "  ", "blue circle"])
