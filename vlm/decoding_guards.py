"""Decoding guards: caption text is never degenerate (whitespace runs, stutter, loops, blanks).

A model far from its training data (the shipped shapes model on a photo) decodes text such as
``t            n    n  n`` or ``three shapes on a a a a circle``. A real captioner refuses such
continuations while it decodes, as Hugging Face's ``no_repeat_ngram_size`` (after Paulus et al.
2018) and the degeneration studies of Holtzman et al. 2020 ("The Curious Case of Neural Text
Degeneration") motivate. Two guards, both options of ``GenerationConfig``:

- ``no_repeat_ngram=N`` (token level, off by default): a token that would repeat an N-gram of
  token ids already generated is forbidden. Off because legitimate captions repeat phrases
  ("a large red square, a large red square and a small red square").
- ``block_degenerate=True`` (text level, on by default): a candidate token is refused when the
  caption text it makes (the tokenizer's own decoding of the whole row)

  * adds nothing (an empty or blank piece at the start, an unknown-token piece),
  * holds two whitespace characters in a row,
  * ends in the same word twice in a row ("a a", "n n"),
  * or repeats a phrase of 2+ words more than ``MAX_PHRASE_REPEATS`` times (a loop).

  The most likely acceptable token among the ``CANDIDATES`` best is taken instead (greedy), the
  sample is redrawn without the refused token (sampling), the candidate is skipped (beam search);
  when none is acceptable the caption ends there: a degenerate continuation stops decoding.
  Greedy decoding also ends a caption where the best acceptable token is a fragment (it adds one
  letter or a blank) with a probability under ``MIN_TOKEN_PROB`` (0.1): on 300 held-out shapes
  scenes the default model's least likely greedy token had 0.295, on photos it falls to 0.004
  just where the text turns to loose letters ("t n y n s n").

With a word list (``vlm.lexicon.Lexicon``, from a checkpoint's ``caption_words``), a token that
would spell a word outside the list is refused too, and a caption stopped mid-word loses the
unfinished word (``vlm.generation``).

A guard acts only when the model's own choice is degenerate, so captions that are already clean
(the default model on shapes scenes) come out unchanged.

    >>> guard = DegenerationGuard(tokenizer)
    >>> guard.acceptable([12, 40], 40)   # False when id 40 decodes to a repeated word
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import torch
from torch import Tensor

MAX_PHRASE_REPEATS = 3  # shapes captions name up to three identical objects: "a red star, a red star and ..."
CANDIDATES = 10  # acceptable tokens looked for among this many of the most likely
MIN_TOKEN_PROB = 0.1  # greedy: a fragment token (one letter, a blank) below this probability ends the caption
_WORD = re.compile(r"[\w']+")


def ngram_blocked(generated: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``generated`` (no-repeat n-gram)."""
    if n <= 0 or len(generated) < n - 1:
        return set()
    if n == 1:
        return set(generated)
    prefix = tuple(generated[len(generated) - n + 1:])
    return {generated[i + n - 1] for i in range(len(generated) - n + 1)
            if tuple(generated[i:i + n - 1]) == prefix}


def block_repeated_ngrams(logits: Tensor, generated: Tensor, n: int) -> Tensor:
    """(N, V) logits with every token that repeats an n-gram of its row (``generated``: (N, T)) at -inf."""
    if n <= 0 or generated.shape[1] < n - 1:
        return logits
    for row, seq in enumerate(generated.tolist()):
        banned = ngram_blocked(seq, n)
        if banned:
            logits[row, list(banned)] = float("-inf")
    return logits


def degenerate_text(text: str, max_phrase_repeats: int = MAX_PHRASE_REPEATS) -> bool:
    """True for text a caption must never read as: whitespace runs, a word twice in a row, loops."""
    if re.search(r"\s\s", text):
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= 2 and words[-1] == words[-2]:
        return True
    for n in range(2, len(words) // (max_phrase_repeats + 1) + 1):  # a phrase of n words, repeated
        tail = tuple(words[len(words) - n:])
        count = sum(tuple(words[i:i + n]) == tail for i in range(len(words) - n + 1))
        if count > max_phrase_repeats:
            return True
    return False


class DegenerationGuard:
    """Judges candidate tokens by the caption text they make, with the tokenizer's own decoding."""

    def __init__(self, tokenizer, eot_id: Optional[int] = None, pad_id: Optional[int] = None, lexicon=None):
        self.decode: Callable[[list[int]], str] = tokenizer.decode
        self.lexicon = lexicon  # a vlm.lexicon.Lexicon: words stay within the model's training words
        self.eot_id = tokenizer.eot_id if eot_id is None else eot_id
        self.pad_id = getattr(tokenizer, "pad_id", 0) if pad_id is None else pad_id
        unk = getattr(tokenizer, "unk_id", None)
        self.refused = {i for i in (unk, getattr(tokenizer, "sot_id", None)) if i is not None and i >= 0}

    def acceptable(self, generated: list[int], token: int) -> bool:
        """Whether ``token`` may follow ``generated`` (ids after the start token, pad ids ignored)."""
        if token == self.eot_id:
            return True
        if token in self.refused:
            return False
        seq = [t for t in generated if t != self.pad_id]
        before, after = self.decode(seq), self.decode(seq + [token])
        if after.strip() == before.strip() and not (before and after.startswith(before) and after != before):
            return False  # adds no text (a blank piece at the start, an empty piece)
        return not degenerate_text(after)

    def fragment(self, generated: list[int], token: int) -> bool:
        """Whether ``token`` adds at most one visible character (a letter or a blank piece)."""
        seq = [t for t in generated if t != self.pad_id]
        before, after = self.decode(seq), self.decode(seq + [token])
        added = after[len(before):] if after.startswith(before) else after
        return len(added.strip()) <= 1

    def choose(self, logits: Tensor, generated: Tensor, finished: Tensor,
               pick: Callable[[Tensor], Tensor], greedy: bool = False,
               states: Optional[list] = None) -> Tensor:
        """Next tokens (N,) from (N, V) ``logits``: ``pick`` (argmax or a sampler) redone without
        refused tokens; a row left with no acceptable token among ``CANDIDATES`` ends (end token),
        and so does, when ``greedy``, a row whose best acceptable token has under ``MIN_TOKEN_PROB``.
        ``states``: each row's lexicon node, when the caller keeps them (else worked out here)."""
        probs = logits.softmax(-1) if greedy else None
        logits = logits.clone()
        chosen = pick(logits)
        rows = generated.tolist()
        out = chosen.tolist()
        lex = self.lexicon
        for r, tok in enumerate(out):
            if finished[r]:
                continue
            tries, node = 0, None if lex is None else (states[r] if states is not None else lex.state(rows[r]))
            nexts = {} if node is None else lex.transitions(node)
            while (node is not None and tok not in nexts) or not self.acceptable(rows[r], tok):
                tries += 1
                logits[r, tok] = float("-inf")
                if node is not None and tries == 1:  # from now on only tokens that keep words known
                    logits[r].masked_fill_(~lex.allowed([node], logits.shape[-1], logits.device)[0],
                                           float("-inf"))
                if tries >= CANDIDATES or not torch.isfinite(logits[r]).any():
                    tok = self.eot_id
                    break
                tok = int(pick(logits[r:r + 1])[0])
            if probs is not None and tok != self.eot_id and float(probs[r, tok]) < MIN_TOKEN_PROB \
                    and self.fragment(rows[r], tok):
                tok = self.eot_id  # an unconfident letter or blank: the text is falling apart
            out[r] = tok
        return torch.tensor(out, dtype=chosen.dtype, device=chosen.device)
