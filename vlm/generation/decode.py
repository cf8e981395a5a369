"""Caption generation for CoCa models: greedy, beam search and top-k/top-p sampling.

The image is encoded once. Both causal stacks that run per token, the unimodal
text tower and the multimodal decoder, keep a key/value cache, and the
decoder's cross-attention keys/values over the image tokens are computed on the
first step only, so each new token costs one position through each stack.

    >>> from vlm.generation.decode import GenerationConfig, generate
    >>> ids = generate(model, images, tokenizer, GenerationConfig(beams=3))  # (B, 3, H, W) -> B id lists

Every option, its default and its bounds live on ``GenerationConfig`` (``vlm.generation.config``,
imported without torch); ``vlm caption``'s flags are derived from its fields.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Optional

import torch
from torch import Tensor

from vlm.generation.guards import CANDIDATES, DegenerationGuard, block_repeated_ngrams
from vlm.generation.config import GenerationConfig, SpecialTokens
from vlm.model.packed_linear import packed_linears
from vlm.runtime.threads import step_threads

__all__ = ["GenerationConfig", "SpecialTokens", "caption_texts", "generate"]


class _Stepper:
    """Runs new token ids through the cached text tower and decoder; returns last logits."""

    def __init__(self, model, image_tokens: Tensor):
        self.model = model
        self.image_tokens = image_tokens
        self.text_cache = model.text.new_cache()
        self.dec_cache = model.decoder.new_cache()
        self.first = True

    def __call__(self, ids: Tensor) -> Tensor:
        h = self.model.text.embed_incremental(ids, self.text_cache)  # (B, T, W)
        logits = self.model.decoder(h, self.image_tokens, cache=self.dec_cache)  # (B, T, V)
        if self.first:  # the first step projected the image keys/values: a dense product, all threads
            self.first = False
            if self.image_tokens.device.type == "cpu":  # later steps: few rows (inside _restored_threads)
                torch.set_num_threads(step_threads(ids.shape[0], torch.get_num_threads()))
        return logits[:, -1].float()

    def reorder(self, index: Tensor) -> None:
        self.text_cache.reorder(index)
        for layer in self.dec_cache.layers[0::2]:  # self-attention; the image cache is per group
            layer.reorder(index)


def _process(logits: Tensor, generated: Tensor, step: int, cfg: GenerationConfig, eot_id: int) -> Tensor:
    """Repetition penalty and minimum length on (N, V) logits; ``generated`` is (N, step)."""
    if cfg.repetition_penalty != 1.0 and generated.shape[1]:
        seen = logits.gather(1, generated)
        seen = torch.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
        big = torch.finfo(seen.dtype).max  # finite stays finite: an inf logit would make softmax nan
        logits = logits.scatter(1, generated, seen.clamp(-big, big))
    if step < cfg.min_tokens:
        logits[:, eot_id] = float("-inf")
    return block_repeated_ngrams(logits, generated, cfg.no_repeat_ngram)


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """(N, V) logits / temperature, shifted so each row's best is 0: the result is never nan
    and only refused tokens are -inf, whatever the temperature (the scale stays inside float)."""
    finfo = torch.finfo(logits.dtype)
    scale = min(max(1.0 / temperature, finfo.tiny), finfo.max)  # 1/T as a finite, non-zero float
    return (logits - logits.amax(-1, keepdim=True)) * scale  # (N, V) <= 0


def _sample(logits: Tensor, cfg: GenerationConfig, generator: Optional[torch.Generator]) -> Tensor:
    logits = _tempered(logits, cfg.temperature)
    if cfg.top_k is not None:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # mass before this token already exceeds p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _normalised(score: float, length: int, length_penalty: float) -> float:
    """A beam's score / length ** length_penalty (GNMT), ``length`` >= 1. Inside the penalty's bounds
    (``LENGTH_PENALTY_LIMIT``) the divisor lies within 1e+-31; the exponent is capped anyway, so no
    value can overflow a float (``x ** 1e308`` raises OverflowError)."""
    cap = 690.0 / math.log(length) if length > 1 else math.inf  # length ** cap is e**690, about 1e300
    return score / float(length) ** min(max(length_penalty, -cap), cap)


def _strip(seq: list[int], eot_id: int, pad_id: int) -> list[int]:
    out = []
    for t in seq:
        if t == eot_id:
            break
        if t != pad_id:
            out.append(t)
    return out


@torch.inference_mode()
def generate(model, images: Tensor, tokens, cfg: Optional[GenerationConfig] = None,
             tokenizer=None, lexicon=None) -> list[list[int]]:
    """Caption token ids (start/end tokens removed) for a (B, 3, H, W) batch of images.

    ``tokens`` is the model's tokenizer or a ``SpecialTokens``; ``cfg`` defaults to greedy decoding.
    With a tokenizer (``tokens`` itself, or ``tokenizer``) and ``cfg.block_degenerate``, degenerate
    text is refused while decoding (``vlm.generation.guards``); with a ``lexicon`` as well
    (``vlm.generation.lexicon.Lexicon``, the checkpoint's training words) no word outside it is spelled.
    """
    cfg = (cfg or GenerationConfig()).validate()
    special = SpecialTokens.of(tokens)
    sot_id, eot_id, pad_id = special.sot, special.eot, special.pad
    if tokenizer is None and not isinstance(tokens, SpecialTokens):
        tokenizer = tokens
    if tokenizer is None and lexicon is not None:
        tokenizer = lexicon.tokenizer
    guard = None
    if tokenizer is not None and cfg.block_degenerate:
        guard = DegenerationGuard(tokenizer, eot_id, pad_id, lexicon=lexicon)
    limit = min(model.cfg.decoder.context_length, model.cfg.text.context_length) - 1
    max_tokens = min(cfg.max_tokens, limit)
    image_tokens = model.visual(images).tokens  # (B, N, D), encoded once
    rows = images.shape[0] * cfg.beams  # every step multiplies this many rows by each weight matrix
    with packed_linears([model.text.transformer, model.decoder], rows), _restored_threads():
        if cfg.beams > 1:
            out = _beam_search(model, image_tokens, sot_id, eot_id, pad_id, cfg, max_tokens, guard)
        else:
            out = _greedy_or_sample(model, image_tokens, sot_id, eot_id, pad_id, cfg, max_tokens, guard)
    if guard is not None and guard.lexicon is not None:  # stopped mid-word: the unfinished word goes
        out = [guard.lexicon.whole_words(row) for row in out]
    if guard is not None:  # stopped mid-phrase (by the length limit or a guard): the dangling tail goes
        out = [guard.complete(row) for row in out]
    return out


_threads_lock = threading.Lock()
_threads_saved: list = []  # [count at the first entry, calls inside]: nested or concurrent calls restore once


@contextlib.contextmanager
def _restored_threads() -> Iterator[None]:
    """torch's CPU thread count as it was before the first of any overlapping ``generate`` calls,
    whatever their steps set (``_Stepper``): restored when the last of them ends."""
    with _threads_lock:
        if not _threads_saved:
            _threads_saved[:] = [torch.get_num_threads(), 0]
        _threads_saved[1] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_saved[1] -= 1
            if _threads_saved[1] == 0:
                if torch.get_num_threads() != _threads_saved[0]:
                    torch.set_num_threads(_threads_saved[0])
                _threads_saved.clear()


def caption_ids(model, images: Tensor, tokenizer, cfg: Optional[GenerationConfig] = None,
                lexicon=None) -> list[list[int]]:
    """Token ids of each image's caption: the one path every caption of vlm takes (``vlm caption``,
    ``Pipeline.caption``, ``vlm evaluate``, ``vlm index --captions``, training samples, ``vlm
    check-precision``), so the guards (``cfg.block_degenerate``, default on) and the word list
    (``lexicon``) hold for all of them alike."""
    return generate(model, images, tokenizer, cfg, lexicon=lexicon)


def caption_texts(model, images: Tensor, tokenizer, cfg: Optional[GenerationConfig] = None,
                  lexicon=None) -> list[str]:
    """Caption text for a (B, 3, H, W) batch (``caption_ids``, decoded)."""
    return [tokenizer.decode(row).strip() for row in caption_ids(model, images, tokenizer, cfg, lexicon=lexicon)]


def _greedy_or_sample(model, image_tokens: Tensor, sot_id: int, eot_id: int, pad_id: int,
                      cfg: GenerationConfig, max_tokens: int, guard=None) -> list[list[int]]:
    B, dev = image_tokens.shape[0], image_tokens.device
    step_fn = _Stepper(model, image_tokens)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    ids = torch.full((B, 1), sot_id, dtype=torch.long, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    lexicon = guard.lexicon if guard is not None else None
    states = [lexicon.state([])] * B if lexicon is not None else None  # each row's node in the word trie
    for step in range(max_tokens):
        raw = step_fn(ids if step == 0 else ids[:, -1:])  # (B, V)
        logits = _process(raw, ids[:, 1:], step, cfg, eot_id)
        pick = (lambda lg: _sample(lg, cfg, generator)) if cfg.sampling else (lambda lg: lg.argmax(-1))
        nxt = pick(logits) if guard is None else guard.choose(logits, ids[:, 1:], finished, pick,
                                                             greedy=not cfg.sampling, states=states,
                                                             model_logits=raw)
        nxt = nxt.masked_fill(finished, pad_id)
        if states is not None:
            states = [lexicon.advance(s, t) for s, t in zip(states, nxt.tolist())]
        finished |= nxt == eot_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if finished.all():
            break
    return [_strip(row, eot_id, pad_id) for row in ids[:, 1:].tolist()]


def _beam_search(model, image_tokens: Tensor, sot_id: int, eot_id: int, pad_id: int,
                 cfg: GenerationConfig, max_tokens: int, guard=None) -> list[list[int]]:
    B, K, dev = image_tokens.shape[0], cfg.beams, image_tokens.device
    step_fn = _Stepper(model, image_tokens.repeat_interleave(K, dim=0))  # (B*K, N, D)
    ids = torch.full((B * K, 1), sot_id, dtype=torch.long, device=dev)
    scores = torch.zeros(B, K, device=dev)
    scores[:, 1:] = float("-inf")  # every beam starts equal: expand only the first
    hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    lexicon = guard.lexicon if guard is not None else None
    states = [lexicon.state([])] * (B * K) if lexicon is not None else None  # each beam's node in the word trie
    for step in range(max_tokens):
        logits = step_fn(ids if step == 0 else ids[:, -1:])
        logp = _process(logits, ids[:, 1:], step, cfg, eot_id).log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        if lexicon is not None:  # the model's own scores; tokens that would spell an unknown word out
            logp = logp.masked_fill(~lexicon.allowed(states, V, dev), float("-inf"))
        cand = (scores.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        top_scores, top_idx = cand.topk(min(2 * K + (CANDIDATES if guard else 0), K * V), dim=1)
        top_beam, top_tok = (top_idx // V).tolist(), (top_idx % V).tolist()
        top_scores = top_scores.tolist()
        new_src, new_tok, new_score = [], [], []
        for b in range(B):
            if done[b]:  # keep the finished group alive with padding; it is ignored
                new_src += [b * K + k for k in range(K)]
                new_tok += [pad_id] * K
                new_score += [float("-inf")] * K
                continue
            chosen = 0
            for rank in range(len(top_tok[b])):
                src, tok, s = b * K + top_beam[b][rank], top_tok[b][rank], top_scores[b][rank]
                if lexicon is not None and s == float("-inf"):
                    break  # the rest are refused words or dead beams
                if guard is not None and not guard.acceptable(ids[src, 1:].tolist(), tok):
                    continue
                if tok == eot_id:
                    if rank < K:
                        seq = ids[src, 1:].tolist() + [tok]
                        hyps[b].append((_normalised(s, len(seq), cfg.length_penalty), seq))
                    continue
                new_src.append(src), new_tok.append(tok), new_score.append(s)
                chosen += 1
                if chosen == K:
                    break
            for _ in range(K - chosen):  # every candidate left was refused: dead beams
                new_src.append(b * K), new_tok.append(pad_id), new_score.append(float("-inf"))
            if chosen == 0:  # only degenerate continuations: the best running beam ends here
                k = int(scores[b].argmax())
                seq = ids[b * K + k, 1:].tolist() + [eot_id]
                hyps[b].append((_normalised(scores[b, k].item(), len(seq), cfg.length_penalty), seq))
            hyps[b] = sorted(hyps[b], key=lambda h: -h[0])[:K]
            best_running = _normalised(max(new_score[-K:]), step + 1, cfg.length_penalty)
            done[b] = chosen == 0 or (len(hyps[b]) >= K and hyps[b][-1][0] >= best_running)
        index = torch.tensor(new_src, device=dev)
        ids = torch.cat([ids.index_select(0, index), torch.tensor(new_tok, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_score, device=dev).view(B, K)
        step_fn.reorder(index)
        if states is not None:
            states = [lexicon.advance(states[s], t) for s, t in zip(new_src, new_tok)]
        if all(done):
            break
    results = []
    for b in range(B):
        if not done[b]:
            for k in range(K):
                seq = ids[b * K + k, 1:].tolist()
                if scores[b, k] > float("-inf"):
                    hyps[b].append((_normalised(scores[b, k].item(), len(seq), cfg.length_penalty), seq))
        best = max(hyps[b], key=lambda h: h[0])[1]
        results.append(_strip(best, eot_id, pad_id))
    return results
