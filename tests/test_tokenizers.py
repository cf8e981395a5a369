"""Tests for vlm.tokenizers: CLIP BPE parity with open_clip, SentencePiece training, save/load."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest
import torch

from conftest import open_clip_submodule
from vlm.tokenizers import (
    CLIPBPETokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    find_clip_bpe_vocab,
    load_tokenizer,
    train_sentencepiece,
)

CORPUS = [
    "a photo of a cat.",
    "A dog running on the beach at sunset",
    "Two people riding bicycles down a busy street, next to a red bus!",
    "Café naïve résumé über Ærøskøbing",
    "東京タワーの夜景 和 北京的天安门",
    "صورة قطة على الأريكة",
    "Привет, мир",
    "emoji 😀🐈 family 👩‍👩‍👧‍👦 and flags 🇯🇵🇺🇸🏳️‍🌈",
    "fish &amp; chips &amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot;",
    "",
    "!!!...???",
    "--- ,,, ;;; (( ))",
    "   ",
    " \t\n  \r\n\t ",
    "3.14159 and 1,000,000 and 42nd street 2024-01-31",
    "it's we'll I'd they've you're I'm can't",
    "IT'S WE'LL MiXeD CaSe WoRdS",
    "tab\tseparated\nnew  lines   and   spaces",
    "mojibake: Ã©tÃ© cafÃ©",
    "soft\u00adhyphen non\u00a0breaking zero\u200bwidth",
    "straße ﬁne ligature Ⅻ numerals ½ fraction",
    "a " * 120,
    "supercalifragilisticexpialidocious " * 20,
]


@pytest.fixture(scope="module")
def clip_tok() -> CLIPBPETokenizer:
    return CLIPBPETokenizer()


@pytest.fixture(scope="module")
def oc_tok():
    """open_clip's tokenizer module, loaded without importing open_clip (fast)."""
    return open_clip_submodule("tokenizer")


# ----------------------------------------------------------------------------- CLIP BPE


def test_clip_special_ids(clip_tok):
    assert clip_tok.vocab_size == 49408
    assert (clip_tok.sot_id, clip_tok.eot_id, clip_tok.pad_id) == (49406, 49407, 0)
    assert clip_tok.context_length == 77
    assert isinstance(clip_tok, Tokenizer)


def test_clip_encode_matches_open_clip(clip_tok, oc_tok):
    ref = oc_tok.SimpleTokenizer()
    for text in CORPUS:
        assert clip_tok.encode(text) == ref.encode(text), text


def test_clip_call_matches_open_clip_tokenize(clip_tok, oc_tok):
    ours = clip_tok(CORPUS)
    theirs = oc_tok.tokenize(CORPUS)
    assert ours.dtype == torch.long and ours.shape == (len(CORPUS), 77)
    assert torch.equal(ours, theirs)
    for length in (5, 16):
        assert torch.equal(clip_tok(CORPUS, context_length=length), oc_tok.tokenize(CORPUS, context_length=length))
    assert torch.equal(clip_tok("a single string"), oc_tok.tokenize("a single string"))


def test_clip_truncation_and_padding(clip_tok):
    long_row = clip_tok("word " * 200)[0]
    assert long_row.shape == (77,) and long_row[0] == 49406 and long_row[-1] == 49407
    assert (long_row != 0).all()
    empty = clip_tok("")[0]
    assert empty[:2].tolist() == [49406, 49407] and (empty[2:] == 0).all()
    assert clip_tok([]).shape == (0, 77)


def test_clip_literal_special_token_text_matches_open_clip(clip_tok, oc_tok):
    # open_clip's pre-tokenizer matches the special-token strings, so literal
    # "<end_of_text>" in a caption becomes the eot id; we keep that for parity.
    text = "hello <END_OF_TEXT> world <start_of_text>"
    assert clip_tok.encode(text) == oc_tok.SimpleTokenizer().encode(text)
    assert 49407 in clip_tok.encode(text)


def test_clip_decode_matches_open_clip(clip_tok, oc_tok):
    ref = oc_tok.SimpleTokenizer()
    for text in CORPUS:
        ids = clip_tok.encode(text)
        # open_clip ends every word with a space, the last one included; we drop that last space.
        assert clip_tok.decode(ids) == ref.decode(ids).rstrip(" "), text


def test_clip_decode_roundtrip_and_specials(clip_tok):
    assert clip_tok.decode(clip_tok.encode("A photo of a CAT")) == "a photo of a cat"
    assert clip_tok.decode(clip_tok.encode("café 東京 😀")) == "café 東京 😀"
    row = clip_tok("a red circle")[0]
    assert clip_tok.decode(row) == "a red circle"  # tensor input; sot/eot/pad dropped
    ids = clip_tok.encode("a red circle")
    assert clip_tok.decode([49406, *ids, 49407, *clip_tok.encode("ignored"), 0, 0]) == "a red circle"
    assert clip_tok.decode([49406, *ids, 0, 0]) == "a red circle"  # no eot: trailing pad dropped
    assert clip_tok.batch_decode(clip_tok(["a dog", "two cats"])) == ["a dog", "two cats"]
    assert clip_tok.decode([]) == ""
    with pytest.raises(ValueError):
        clip_tok.decode([49408])


def test_clip_save_load(clip_tok, tmp_path):
    clip_tok.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["type"] == "clip_bpe" and config["context_length"] == 77
    vocab = tmp_path / "tok" / config["vocab_file"]
    assert vocab.read_bytes() == find_clip_bpe_vocab().read_bytes()
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, CLIPBPETokenizer) and loaded.vocab_file == vocab
    assert torch.equal(loaded(CORPUS), clip_tok(CORPUS))
    loaded.save(tmp_path / "tok")  # saving over its own directory is fine


def test_vocab_found_without_importing_open_clip():
    code = (
        "import sys\n"
        "from vlm.tokenizers import CLIPBPETokenizer, find_clip_bpe_vocab\n"
        "find_clip_bpe_vocab(); CLIPBPETokenizer().encode('a cat')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('open_clip', 'torchvision', 'transformers', 'torch', 'sentencepiece')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- SentencePiece


def _captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sizes = ["small", "large", "tiny", "big", "huge", "medium"]
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "gray"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "ellipse", "rectangle", "diamond"]
    places = ["on a", "next to a", "above a", "below a", "inside a", "left of a"]
    out = []
    for _ in range(n):
        out.append(
            f"A {rng.choice(sizes)} {rng.choice(colors)} {rng.choice(shapes)} "
            f"{rng.choice(places)} {rng.choice(colors)} {rng.choice(shapes)}."
        )
    return out


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp_trained(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"spm_{request.param}")
    start = time.perf_counter()
    tok = train_sentencepiece(_captions(), out_dir, vocab_size=80, model_type=request.param)
    elapsed = time.perf_counter() - start
    return tok, out_dir, elapsed


def test_sp_trains_fast_with_fixed_special_ids(sp_trained):
    tok, _, elapsed = sp_trained
    assert elapsed < 5.0
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.pad_id, tok.unk_id, tok.sot_id, tok.eot_id) == (0, 1, 2, 3)
    assert 20 < tok.vocab_size <= 80


def test_sp_lowercases_and_roundtrips(sp_trained):
    tok, _, _ = sp_trained
    assert tok.encode("A Red Circle") == tok.encode("a red circle")
    assert tok.encode("") == []
    for cap in _captions(20, seed=1):
        ids = tok.encode(cap)
        assert all(4 <= i < tok.vocab_size for i in ids)  # no specials, no unk for seen characters
        assert tok.decode(ids) == cap.lower()
    assert tok.decode([2, *tok.encode("a red star."), 3, 5, 6]) == "a red star."
    assert tok.batch_decode(tok(["A red star.", "a blue circle."])) == ["a red star.", "a blue circle."]


def test_sp_batching_like_clip(sp_trained):
    tok, _, _ = sp_trained
    texts = ["a red star.", "", "A huge blue hexagon next to a pink diamond. " * 10]
    batch = tok(texts, context_length=12)
    assert batch.shape == (3, 12) and batch.dtype == torch.long
    short = [2, *tok.encode(texts[0]), 3]
    assert batch[0].tolist() == short + [0] * (12 - len(short))
    assert batch[1].tolist() == [2, 3] + [0] * 10
    long_ids = [2, *tok.encode(texts[2])][:11] + [3]
    assert batch[2].tolist() == long_ids
    assert tok("a red star.").shape == (1, 77)


def test_sp_save_load(sp_trained, tmp_path):
    tok, out_dir, _ = sp_trained
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    assert config["type"] == "sentencepiece" and config["model_file"] == "spm.model"
    texts = _captions(10, seed=2) + ["Unseen Zebra!"]
    loaded = load_tokenizer(out_dir)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert torch.equal(loaded(texts), tok(texts))
    tok.save(tmp_path / "copy")
    again = SentencePieceTokenizer(tmp_path / "copy" / "spm.model", context_length=77)
    assert [again.encode(t) for t in texts] == [tok.encode(t) for t in texts]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer(tmp_path)
