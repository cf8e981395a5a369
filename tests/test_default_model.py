"""The shipped default model (vlm/pretrained/default) does its job.

The bundled examples are captioned and classified right through the real CLI
with no --model, and on a small shapes set of a seed training never used the
model still captions and zero-shot classifies single objects well. The full
figures come from `vlm evaluate` on 1000 images (README, docs/training.md);
these thresholds sit well below them and only catch broken or swapped weights.

Run: ``pytest tests/test_default_model.py -q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_vlm

EXAMPLES = REPO / "examples"


def test_caption_examples_with_the_default_model():
    proc = run_vlm("caption", EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    captions = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert len(captions) == 4
    assert "blue triangle" in captions[str(EXAMPLES / "blue_triangle.png")]
    assert "orange star" in captions[str(EXAMPLES / "orange_star.png")]
    both = captions[str(EXAMPLES / "red_star_above_orange_square.png")]
    assert "red star" in both and "orange square" in both


def test_classify_examples_with_the_default_model():
    labels = "red star,orange star,blue triangle,yellow circle,green square"
    proc = run_vlm("classify", EXAMPLES / "blue_triangle.png", EXAMPLES / "orange_star.png", "--labels", labels,
                   "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    top = [line.split(": ", 1)[1].split(" (")[0] for line in proc.stdout.splitlines()]
    assert top == ["blue triangle", "orange star"]


@pytest.fixture(scope="module")
def unseen_shapes(tmp_path_factory) -> Path:
    from vlm.data.shapes_dir import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("unseen") / "shapes", 120, seed=4242)


def test_default_model_on_unseen_shapes(unseen_shapes):
    import vlm
    from vlm.evaluation.evaluate import evaluate_model
    from vlm.evaluation.shapes_check import shapes_checks

    report = evaluate_model(vlm.load(), unseen_shapes, spice=False, meteor=False, checks=shapes_checks(unseen_shapes))
    assert report["zero_shot"]["num_images"] >= 40
    assert report["zero_shot"]["top1"] >= 0.85, report["zero_shot"]
    assert report["shapes_attribute_accuracy"] >= 0.85
    assert report["captioning"]["cider"] >= 1.5
