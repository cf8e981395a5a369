"""Tests for caption metrics, retrieval recall@k and zero-shot top-k accuracy.

Expected values are worked out by hand in the comments.  The Java tools (PTB
tokenizer, METEOR) start once: the full metric run is a module fixture.

Run: pytest tests/test_metrics.py
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from vlm.evaluation import captioning
from vlm.evaluation.captioning import caption_metrics, evaluate_captions
from vlm.evaluation.retrieval import retrieval_recall
from vlm.evaluation.zeroshot import topk_accuracy

REFS = {
    1: ["A large red circle to the left of a small blue triangle.",
        "a small blue triangle to the right of a large red circle",
        "two shapes on a plain background"],
    2: ["a black cat sits on a red mat"],
    3: ["Two dogs are playing in the snow near a tree.", "a pair of dogs plays in the snow"],
    4: ["a man is riding a brown horse on the beach", "a person rides a horse along the sea shore"],
}
PERFECT = {i: refs[0] for i, refs in REFS.items()}
IMPERFECT = {
    1: "a red circle and a blue square",
    2: "a cat on a mat",
    3: "two cats in the snow",
    4: "a man riding a horse",
}
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")


@pytest.fixture(scope="module")
def perfect_report():
    return evaluate_captions(REFS, PERFECT, spice=True, meteor=True)


@pytest.fixture(scope="module")
def imperfect_report():
    return evaluate_captions(REFS, IMPERFECT, spice=False, meteor=False)


@needs_java
def test_identical_candidates_score_one(perfect_report):
    m = perfect_report.metrics
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert 0.95 < m["meteor"] <= 1.0
    assert m["cider"] > 2.0


@needs_java
def test_hand_computed_bleu_with_brevity_penalty(imperfect_report):
    # "a cat on a mat" (5 words) vs "a black cat sits on a red mat" (8 words):
    # unigrams a,a,cat,on,mat all match -> p1 = 5/5; bigrams "on a" only -> p2 = 1/4;
    # brevity penalty exp(1 - 8/5) = exp(-0.6).
    bp = math.exp(-0.6)
    assert imperfect_report.per_image["bleu_1"][2] == pytest.approx(bp, rel=1e-6)
    assert imperfect_report.per_image["bleu_2"][2] == pytest.approx(bp * math.sqrt(1 * 0.25), rel=1e-6)


@needs_java
def test_cider_and_bleu_order_perfect_above_imperfect(perfect_report, imperfect_report):
    good, bad = perfect_report.metrics, imperfect_report.metrics
    assert good["cider"] > bad["cider"] > 0
    assert good["bleu_4"] > bad["bleu_4"]
    assert "meteor" not in bad and "spice" not in bad
    assert list(bad) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"]


def check_spice(report, missing: list[str]) -> None:
    """Without its jars SPICE is absent and one note names every missing file; with them it is a score."""
    spice_notes = [n for n in report.notes if n.startswith("SPICE skipped:")]
    if missing:
        assert "spice" not in report.metrics
        assert len(spice_notes) == 1 and all(name in spice_notes[0] for name in missing), report.notes
        assert str(captioning.spice_lib_dir()) in spice_notes[0]
    else:
        assert spice_notes == [], report.notes
        assert 0.0 < report.metrics["spice"] <= 1.0  # identical candidates share most tuples


@needs_java
def test_spice_is_reported_or_explained(perfect_report):
    check_spice(perfect_report, captioning.spice_missing_files())


def test_without_java_falls_back_with_notes(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="Java not found"):
        metrics = caption_metrics(REFS, PERFECT)
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert "meteor" not in metrics and "spice" not in metrics


def test_bad_caption_inputs():
    with pytest.raises(ValueError, match="candidates: empty"):
        evaluate_captions(REFS, {})
    with pytest.raises(ValueError, match=r"candidates\[99\]: no references"):
        evaluate_captions(REFS, {99: "a cat"})
    with pytest.raises(ValueError, match=r"references\[1\]"):
        evaluate_captions({1: []}, {1: "a cat"})
    with pytest.raises(ValueError, match=r"candidates\[1\]: must be a string"):
        evaluate_captions(REFS, {1: ["a cat"]})


# ----------------------------------------------------------------------------- retrieval

# 3 images x 6 texts; texts 0,1 belong to image 0, texts 2,3 to image 1, texts 4,5 to image 2.
SIM = torch.tensor([
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],
    [0.7, 0.6, 0.5, 0.1, 0.9, 0.2],
    [0.2, 0.3, 0.4, 0.8, 0.1, 0.0],
])
TEXT_TO_IMAGE = [0, 0, 1, 1, 2, 2]


def test_retrieval_recall_hand_built():
    r = retrieval_recall(SIM, TEXT_TO_IMAGE, ks=(1, 2, 5))
    # image -> text, best own caption's rank (wrong texts scoring >= it):
    #   image 0: own 0.9 is top -> 0; image 1: own best 0.5 < 0.7, 0.6, 0.9 -> 3;
    #   image 2: own best 0.1 < 0.2, 0.3, 0.4, 0.8 -> 4
    assert r["i2t_r1"] == pytest.approx(1 / 3)
    assert r["i2t_r2"] == pytest.approx(1 / 3)
    assert r["i2t_r5"] == pytest.approx(1.0)
    # text -> image, own image's rank per column: t0 0, t1 2, t2 1, t3 2, t4 2, t5 2
    assert r["t2i_r1"] == pytest.approx(1 / 6)
    assert r["t2i_r2"] == pytest.approx(2 / 6)
    assert r["t2i_r5"] == pytest.approx(1.0)
    assert r["i2t_mean_rank"] == pytest.approx(1 + 7 / 3)
    assert r["t2i_mean_rank"] == pytest.approx(1 + 9 / 6)
    assert r["rsum"] == pytest.approx(100 * (1 / 3 + 1 / 3 + 1 + 1 / 6 + 2 / 6 + 1))


def test_retrieval_default_ks_ties_and_errors():
    r = retrieval_recall(SIM, TEXT_TO_IMAGE)
    assert set(r) >= {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}
    assert r["i2t_r10"] == 1.0 and r["t2i_r10"] == 1.0
    flat = retrieval_recall(torch.zeros(3, 6), TEXT_TO_IMAGE, ks=(1,))
    assert flat["i2t_r1_worst"] == 0.0 and flat["t2i_r1_worst"] == 0.0  # the bound: ties count against the model
    assert r["i2t_r1_worst"] == r["i2t_r1"] and r["t2i_r5_worst"] == r["t2i_r5"]  # no ties: the same figures
    perfect = retrieval_recall(torch.eye(3).repeat_interleave(2, dim=1), TEXT_TO_IMAGE, ks=(1,))
    assert perfect["i2t_r1"] == 1.0 and perfect["t2i_r1"] == 1.0
    with pytest.raises(ValueError, match="text_to_image: has 5 entries for 6 texts"):
        retrieval_recall(SIM, TEXT_TO_IMAGE[:5])
    with pytest.raises(ValueError, match="image 2 has no text"):
        retrieval_recall(SIM, [0, 0, 1, 1, 1, 1])


def clip_benchmark_recall(scores_texts_images: torch.Tensor, text_to_image: list[int], k: int) -> tuple[float, float]:
    """CLIP_benchmark's recall@k, written here from its documentation (README and the comments of
    metrics/zeroshot_retrieval.py): scores are (texts, images); a query's k best are those torch.topk
    returns; image retrieval: a text scores 1 when its image is among its k best images; text
    retrieval: an image scores 1 when at least one of its texts is among its k best texts (on the
    transposed matrix); each recall is the mean of those 0/1 scores. Returns (i2t, t2i)."""
    n_texts, n_images = scores_texts_images.shape
    t2i_hits = [text_to_image[t] in scores_texts_images[t].topk(k).indices.tolist() for t in range(n_texts)]
    by_image = scores_texts_images.T
    i2t_hits = [any(text_to_image[t] == i for t in by_image[i].topk(k).indices.tolist()) for i in range(n_images)]
    return sum(i2t_hits) / n_images, sum(t2i_hits) / n_texts


def test_retrieval_recall_is_clip_benchmarks_on_tied_scores():
    """Repeated captions give equal text embeddings, so exact ties (issue 18: 0.500 against
    CLIP_benchmark's 0.563). vlm's figures are CLIP_benchmark's on the same matrix; the pessimistic
    bound stays beside them and is never higher."""
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)  # 5 distinct captions
    caption_of = torch.randint(0, 5, (32,), generator=g)  # 2 texts per image, drawn from the pool
    text_to_image = [t // 2 for t in range(32)]
    texts = pool[caption_of] + 0.3 * images[text_to_image]  # each text leans to its image ...
    texts[::2] = pool[caption_of[::2]]  # ... but half of them are bare repeated captions: exact ties
    sim = images @ texts.T  # (N_images, N_texts), as vlm evaluate builds it
    r = retrieval_recall(sim, text_to_image, ks=(1, 5))
    ties = 0
    for k in (1, 5):
        i2t, t2i = clip_benchmark_recall(texts @ images.T, text_to_image, k)
        assert (r[f"i2t_r{k}"], r[f"t2i_r{k}"]) == (pytest.approx(i2t), pytest.approx(t2i)), k
        assert r[f"i2t_r{k}_worst"] <= r[f"i2t_r{k}"] and r[f"t2i_r{k}_worst"] <= r[f"t2i_r{k}"]
        ties += (r[f"i2t_r{k}_worst"], r[f"t2i_r{k}_worst"]) != (r[f"i2t_r{k}"], r[f"t2i_r{k}"])
    assert ties  # the case shows the difference the tie rule makes


# ----------------------------------------------------------------------------- zero-shot


def test_topk_accuracy_hand_built():
    logits = torch.tensor([
        [2.0, 1.0, 0.0],  # label 0: rank 0
        [0.1, 0.5, 0.3],  # label 2: rank 1
        [1.0, 2.0, 3.0],  # label 0: rank 2
        [5.0, 5.0, 1.0],  # label 1: tied with class 0 -> rank 1
    ])
    labels = torch.tensor([0, 2, 0, 1])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(0.25), "top2": pytest.approx(0.75), "top5": 1.0}
    assert topk_accuracy(logits, [0, 2, 0, 1]) == {"top1": 0.25, "top5": 1.0}  # C=3 < 5


def test_topk_accuracy_errors_and_nan():
    assert topk_accuracy(torch.tensor([[float("nan"), 0.0]]), [0], ks=(1,)) == {"top1": 0.0}
    with pytest.raises(ValueError, match="labels: has 2 entries for 1 rows"):
        topk_accuracy(torch.zeros(1, 3), [0, 1])
    with pytest.raises(ValueError, match=r"labels: must be in 0\.\.2"):
        topk_accuracy(torch.zeros(1, 3), [3])
    with pytest.raises(ValueError, match="logits: must be a 2-D tensor"):
        topk_accuracy(torch.zeros(3), [0, 1, 2])
