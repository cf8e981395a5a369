"""``vlm evaluate`` end to end on a tiny model and a tiny shapes set, plus the shapes attribute check.

Run: ``pytest tests/test_evaluate.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlm.evaluation.shapes_check import named_attributes, shapes_attribute_accuracy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model dir, shapes dir): a random tiny CoCa with a SentencePiece vocabulary."""
    from vlm.checkpoint import save_pretrained
    from vlm.config import get_config
    from vlm.data.shapes import generate_shapes
    from vlm.model import create_model
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
                 "--no-meteor", "--max-tokens", "4", "--max-images", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 4 and out["skipped_images"] == 2
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
