"""The pieces that make reduced-precision decoding fast (issue 20) keep its results: the rescored LM
head, the append buffer of the key/value cache, one-query attention in bfloat16, and the thread
count of decoding steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def _peaked_head(vocab: int = 5000, dim: int = 64, seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(dim, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, dim, generator=g) * 0.5)
        head.bias.copy_(torch.randn(vocab, generator=g) * 0.1)
    x = torch.randn(3, 7, dim, generator=g)  # (B, T, D)
    return head, x


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_rescored_head_gives_float32_best_logits(precision):
    from vlm.runtime.precision import rescored_head

    head, x = _peaked_head()
    with torch.inference_mode():
        ref = head(x)  # (B, T, V) float32
        out = rescored_head(head, precision, k=16)(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    top_ref = ref.topk(8, dim=-1)  # well inside the 16 recomputed (the 16th may differ: a boundary)
    top_out = out.topk(8, dim=-1)
    assert torch.equal(top_out.indices, top_ref.indices)
    torch.testing.assert_close(top_out.values, top_ref.values, rtol=0, atol=1e-4)  # exact up to summation order
    # below the 16 best the logits are the reduced copy's: close, not exact
    rest = torch.ones_like(ref, dtype=torch.bool).scatter(-1, ref.topk(32, dim=-1).indices, False)
    err = (out - ref)[rest].abs().max()
    scale = ref.abs().max()  # about 15 here
    assert 0 < err < (0.05 if precision == "int8" else 0.01) * scale  # 8-bit integers / 8-bit mantissa


def test_rescored_head_keeps_the_state_dict_key_and_weights():
    import copy

    import vlm
    from vlm.runtime.precision import to_precision
    from vlm.runtime.rescored_head import RescoredHead

    model = vlm.load(device="cpu").model
    fp32_head = model.decoder.lm_head.weight.detach().clone()
    for precision in ("bf16", "int8"):
        m = to_precision(copy.deepcopy(model), precision, torch.device("cpu"))
        assert isinstance(m.decoder.lm_head, RescoredHead)
        w = m.decoder.lm_head.weight
        assert w.dtype == torch.float32 and torch.equal(w, fp32_head)  # not a bf16-rounded copy
        assert "decoder.lm_head.weight" in m.state_dict()


def test_cache_append_equals_concatenation_and_reorders():
    from vlm.model.layers import LayerCache

    g = torch.Generator().manual_seed(1)
    cache, ks, vs = LayerCache(), [], []
    for t in (3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1):  # past the first capacity (16)
        k, v = torch.randn(4, 2, t, 8, generator=g), torch.randn(4, 2, t, 8, generator=g)
        ks.append(k), vs.append(v)
        got_k, got_v = cache.append(k, v)
        assert torch.equal(got_k, torch.cat(ks, dim=2)) and torch.equal(got_v, torch.cat(vs, dim=2))
    index = torch.tensor([2, 2, 0, 1])
    cache.reorder(index)
    assert torch.equal(cache.k, torch.cat(ks, dim=2)[index]) and torch.equal(cache.v, torch.cat(vs, dim=2)[index])
    k, v = torch.randn(4, 2, 1, 8, generator=g), torch.randn(4, 2, 1, 8, generator=g)
    got_k, _ = cache.append(k, v)
    assert torch.equal(got_k, torch.cat([torch.cat(ks, dim=2)[index], k], dim=2))


def test_one_query_attention_in_bf16_is_close_to_float32():
    from vlm.model.layers import Attention, LayerCache

    torch.manual_seed(0)
    attn = Attention(64, 4, kv_dim=32).eval()
    x, ctx = torch.randn(3, 1, 64), torch.randn(3, 50, 32)
    with torch.inference_mode():
        ref = attn(x, context=ctx, cache=LayerCache())
        ref_self = Attention(64, 4).eval()
        bf = Attention(64, 4, kv_dim=32).eval()
        bf.load_state_dict(attn.state_dict())
        out = bf.to(torch.bfloat16)(x.bfloat16(), context=ctx.bfloat16(), cache=LayerCache())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.03)
        # self-attention decoding of a bf16 model on CPU: the cache holds float32, steps attend in float32
        cache, full = LayerCache(), torch.randn(3, 6, 64)
        ref_full = ref_self(full, is_causal=True)
        bf_self = Attention(64, 4).eval()
        bf_self.load_state_dict(ref_self.state_dict())
        bf_self.to(torch.bfloat16)
        for t in range(6):
            y = bf_self(full[:, t:t + 1].bfloat16(), is_causal=True, cache=cache)
        assert cache.k.dtype == torch.float32 and cache.k.shape[2] == 6
        torch.testing.assert_close(y.float(), ref_full[:, -1:], rtol=0.05, atol=0.03)


def test_one_query_cross_attention_is_attention():
    """The two-product path of a bf16 decoding step computes what PyTorch's attention computes."""
    from vlm.model.layers import _one_query_cross_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 8, n, 16, generator=g) for n in (1, 255, 255))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(_one_query_cross_attention(q, k, v), ref, rtol=1e-5, atol=1e-6)


def test_the_head_copy_is_int8_on_a_cpu_with_an_engine(monkeypatch):
    import vlm.runtime.precision as P

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only the type is read: no GPU needed
    assert P.head_copy_precision("int8", cpu) == "int8"
    assert P.head_copy_precision("bf16", cuda) == "bf16"  # int8 dynamic quantisation is CPU-only
    monkeypatch.setattr(P, "_int8_engine", lambda: "x86")
    assert P.head_copy_precision("bf16", cpu) == "int8"
    monkeypatch.setattr(P, "_int8_engine", lambda: None)  # a build without a quantised engine
    assert P.head_copy_precision("bf16", cpu) == "bf16"


def test_decoding_steps_take_one_thread_under_passive_waits_and_restore_it():
    from vlm.runtime.threads import STEP_ROWS_ONE_THREAD, step_threads

    passive, active = {"OMP_WAIT_POLICY": "passive"}, {"OMP_WAIT_POLICY": "ACTIVE"}
    assert step_threads(8, 2, passive) == 1 and step_threads(STEP_ROWS_ONE_THREAD, 4, passive) == 1
    assert step_threads(STEP_ROWS_ONE_THREAD + 1, 2, passive) == 2  # many rows: the threads pay
    assert step_threads(8, 2, active) == 2 and step_threads(8, 2, {}) == 2  # spinning threads cost no wake-up


def test_generate_restores_the_thread_count(monkeypatch):
    import vlm
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import generate

    pipe = vlm.load(device="cpu")
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    before = torch.get_num_threads()
    images = torch.rand(2, 3, pipe.model.cfg.vision.image_size, pipe.model.cfg.vision.image_size)
    generate(pipe.model, images, pipe.tokenizer, GenerationConfig(max_tokens=5))
    assert torch.get_num_threads() == before
    if before > 1:
        assert seen == [1, before]  # one thread after the first step, then back


def test_overlapping_generations_restore_the_first_thread_count():
    from vlm.generation.decode import _restored_threads

    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # a count the steps' 1 differs from, on any machine
    before = torch.get_num_threads()
    a, b = _restored_threads(), _restored_threads()
    a.__enter__()
    torch.set_num_threads(1)  # what the first call's steps set
    b.__enter__()  # a second call starts meanwhile (another thread of the same process)
    a.__exit__(None, None, None)  # the first ends: the second still runs its one-thread steps
    assert torch.get_num_threads() == 1
    b.__exit__(None, None, None)  # the last one ends: back to the count before the first
    assert torch.get_num_threads() == before
    torch.set_num_threads(outer)
