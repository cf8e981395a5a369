"""Caption words (vlm.generation.lexicon): the trie over a checkpoint's training words, the training export
that records them, and the word list shipped with the default model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO

from vlm.io.checkpoint import read_config
from vlm.generation.lexicon import Lexicon, caption_words

DEFAULT = REPO / "vlm" / "pretrained" / "default"
MICRO = str(REPO / "configs" / "micro.yaml")


@pytest.fixture(scope="module")
def tok():
    from vlm.io.checkpoint import load_checkpoint_tokenizer

    return load_checkpoint_tokenizer(DEFAULT, read_config(DEFAULT)[0])


def test_caption_words_are_normalised_and_distinct():
    assert caption_words(["A Red circle, a red STAR", "two stars' shapes"]) == \
        ["a", "circle", "red", "shapes", "star", "stars'", "two"]


def test_a_token_must_keep_the_word_a_prefix_of_a_known_word(tok):
    lex = Lexicon(["a", "large", "red", "square"], tok)
    assert lex.num_words == 4
    ok = tok.encode("a large red square")
    node = lex.state(ok)
    assert node is not None and lex.terminal[node]
    assert lex.state(tok.encode("a largerom")) is None and lex.state(tok.encode("a circle")) is None
    mid = lex.state(tok.encode("a lar"))  # "lar": a prefix of "large", not a word: the caption cannot end
    assert mid is not None and not lex.terminal[mid] and tok.eot_id not in lex.transitions(mid)
    allowed = lex.allowed([mid, lex.state([])], width=tok.vocab_size)
    assert allowed.shape == (2, tok.vocab_size) and not allowed[0, tok.eot_id] and allowed[1, tok.eot_id]
    for t in allowed[0].nonzero().flatten().tolist():  # every allowed token keeps the words known
        assert lex.state(tok.encode("a lar") + [t]) is not None
    assert lex.whole_words(tok.encode("a large red squ")) == tok.encode("a large red")
    assert lex.whole_words(ok) == ok


def test_the_default_model_lists_the_words_of_the_shapes_generator():
    from vlm.data.shapes import caption_pool, sample_scene

    raw = json.loads((DEFAULT / "config.json").read_text())
    assert set(raw["metadata"]) == {"zero_shot_templates", "caption_words"}  # the current layout
    assert "zero_shot_templates" not in raw
    rng = np.random.default_rng(1)  # every form of caption the generator writes, over many scenes
    assert read_config(DEFAULT)[1].caption_words == \
        caption_words(c for _ in range(1000) for c in caption_pool(sample_scene(rng)))


def test_training_export_records_the_words_of_its_captions(tmp_path):
    from vlm.data.shapes_dir import generate_shapes
    from vlm.training import train
    from vlm.training.config import load_train_config
    from vlm.training.data import training_caption_words

    data = generate_shapes(tmp_path / "s", 16, seed=5)
    captions = [a["caption"] for a in json.loads((data / "annotations" / "captions.json").read_text())["annotations"]]
    train(load_train_config(MICRO, [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "steps=1"]))
    meta = read_config(tmp_path / "run" / "model")[1]
    assert meta.caption_words == caption_words(captions)
    more = generate_shapes(tmp_path / "more", 4, seed=6)
    cfg = load_train_config(None, [f"init_from={tmp_path / 'run' / 'model'}", f"data.root={more}"])
    added = [a["caption"] for a in json.loads((more / "annotations" / "captions.json").read_text())["annotations"]]
    assert training_caption_words(cfg) == caption_words(captions + added)  # a CoCa's words and the new ones
