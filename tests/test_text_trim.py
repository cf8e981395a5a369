"""The text tower runs no trailing padding: ``TextTransformer.embed`` cuts a batch to its
longest text and equals the full-length ``forward(...).pooled`` (and open_clip's 77-position
``encode_text``) for every pooling and CLS-mask layout."""

from __future__ import annotations

import pytest
import torch

from vlm.model.config import get_config, list_configs
from vlm.model.coca import create_model

from conftest import perturb, shrink


def _short_batch(cfg, lengths=(3, 7, 5), seed=0):
    """Token rows [sot, words..., eot, pad...] of the given lengths, padded to the context length."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.text
    text = torch.full((len(lengths), t.context_length), t.pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        text[i, :n] = torch.randint(5, t.vocab_size - 2, (n,), generator=g)
        text[i, n - 1] = t.eot_id
    return text


def _positions_run(model, text) -> int:
    seen = []
    hook = model.text.transformer.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    try:
        model.text.embed(text)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("name", list_configs())
@pytest.mark.parametrize("legacy", [False, True])
def test_trimmed_embedding_equals_full_length(name, legacy):
    cfg = shrink(get_config(name))
    if legacy and cfg.text.pool != "cls":
        pytest.skip("the legacy CLS mask only exists for pool='cls'")
    cfg.text.cls_mask = "legacy" if legacy else "correct"
    model = perturb(create_model(cfg)).eval()
    text = _short_batch(cfg)
    full_len = text.shape[1]
    with torch.no_grad():
        full = model.text(text).pooled
        trimmed = model.text.embed(text)
    assert (full - trimmed).abs().max() < 1e-5
    assert full.std() > 1e-3 and (full[0] - full[1]).abs().max() > 1e-3  # not a degenerate witness
    ran = _positions_run(model, text)
    extra = 1 if cfg.text.pool == "cls" else 0  # the appended CLS token
    assert ran == 7 + extra + (1 if legacy else 0) < full_len


@pytest.mark.parametrize("legacy", [False, True])
def test_full_length_and_unterminated_rows_are_not_cut(legacy):
    cfg = shrink(get_config("tiny"))
    cfg.text.cls_mask = "legacy" if legacy else "correct"
    model = perturb(create_model(cfg)).eval()
    g = torch.Generator().manual_seed(3)
    text = torch.randint(5, cfg.text.vocab_size - 2, (2, cfg.text.context_length), generator=g)  # no padding
    with torch.no_grad():
        assert (model.text(text).pooled - model.text.embed(text)).abs().max() < 1e-5
    assert _positions_run(model, text) == cfg.text.context_length + 1


@pytest.mark.parametrize("arch", ["ViT-B-32", "coca_ViT-B-32"])
def test_short_texts_match_open_clip_77_positions(arch):
    pytest.importorskip("open_clip")
    from test_convert_open_clip import build

    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    oc, model, vcfg = build(arch)
    text = CLIPBPETokenizer()(["a dog", "a photo of a blue triangle.", "red"], context_length=vcfg.text.context_length)
    with torch.no_grad():
        ref = oc.encode_text(text, normalize=True)
        ours = model.encode_text(text)
    assert (ref - ours).abs().max() < 1e-5
    assert _positions_run(model, text) < 12
