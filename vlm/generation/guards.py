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
  * stutters: ends in the same word twice ("a a", "n n"), or the same run of words and marks
    twice in a row ("a large orange a large orange", ",,"),
  * loops: uses a content word, or a phrase of 2+ words, more than ``MAX_PHRASE_REPEATS``
    times ("a red square red star red square red triangle red"; ``FUNCTION_WORDS`` such as
    "a", "of", "is" may come any number of times),
  * dangles: puts a word that needs another after it (``DANGLING``: articles, possessive
    determiners, conjunctions, prepositions) right before a punctuation mark ("and a, circle"),
    or a determiner right before such a word ("a an", "the of"),
  * or, for the end token, would end the caption on a blank, a comma or another separator, a
    ``DANGLING`` word ("three shapes on a"), or a noun phrase with no noun: a determiner followed
    only by ``MODIFIERS``, size and colour words that need a noun after them ("a small",
    "a large red"; a captioner far from its data, the default model on a microscope slide, ends so).

  The most likely acceptable token among the ``CANDIDATES`` best is taken instead (greedy), the
  sample is redrawn without the refused token (sampling), the candidate is skipped (beam search);
  when none is acceptable the caption ends there: a degenerate continuation stops decoding.
  Greedy decoding also ends a caption where the best acceptable token is a fragment (it adds one
  letter or a blank) with a probability under ``MIN_TOKEN_PROB`` (0.1): on 300 held-out shapes
  scenes the default model's least likely greedy token had 0.295, on photos it falls to 0.004
  just where the text turns to loose letters ("t n y n s n"). That probability is the model's
  own, before a repetition penalty reshapes it (below 1 the penalty gives tokens already used
  nearly all the mass).

  A caption stopped by a guard or by the length limit is cut back to its last complete phrase
  ("three shapes on a" -> "three shapes", "a yellow square," -> "a yellow square", never inside
  a word), so every caption ends on a complete phrase; one with no complete prefix is empty.

The rules read only the decoded text, so they hold for any tokenizer and vocabulary; the word
lists are English closed-class words, as vlm's captioners write English. They define what is
degenerate, not what is good: sampling at a high temperature (or with a repetition penalty below
1) still gives word salad, which the user asked for, but no caption is degenerate by these rules
or ends mid-phrase. None of the 28,266 distinct captions the shapes generator writes for 20,000
scenes is refused at any prefix.

With a word list (``vlm.generation.lexicon.Lexicon``, from a checkpoint's ``caption_words``), a token that
would spell a word outside the list is refused too, and a caption stopped mid-word loses the
unfinished word (``vlm.generation.decode``).

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
_BLANKS = re.compile(r"\s\s")
_TERM = re.compile(r"[\w']+|[^\w\s]")  # words and single punctuation marks
# English closed-class words that need a word after them: articles, possessive determiners, conjunctions,
# prepositions (not those that often end a phrase as particles: up, down, out, off, over, above, ...).
DETERMINERS = frozenset("a an the my your its our their whose".split())  # need a noun phrase after them
DANGLING = DETERMINERS | frozenset("""and or but nor than of to from with at by for into onto upon on in
                                   as via""".split())
# Words a caption may use any number of times ("a man with a hat and a dog with a ball"); any other word
# more than MAX_PHRASE_REPEATS times is a loop ("a red square red star red square red triangle red").
FUNCTION_WORDS = DANGLING | frozenset("""is are was were be been there here it this that these those he she
                                       they him her them his""".split())
# Size, colour and degree words: after a determiner they need a noun ("a small" is no phrase). Words that
# often stand alone after "the" ("the other", "the same", "a few", "a little") are left out.
MODIFIERS = frozenset("""small large big tiny huge medium tall wide narrow very red orange yellow green blue
                       purple pink brown black white gray grey""".split())
_BREAKS = frozenset(",;:.!?)]}")  # marks that close a phrase: no word of DANGLING may come right before one
_ENDS = frozenset(".!?)]}\"'»”’")  # marks a complete caption may end on (a comma, a dash, "(" it may not)


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
    """True for text a caption must never read as (the rules of the module docstring). They look
    at how the text ends: a guard checks every prefix as the caption grows."""
    if _BLANKS.search(text):
        return True
    lower = text.lower()
    terms = _TERM.findall(lower)  # words and marks: "a red star, a red star" is a list, no stutter
    words = _WORD.findall(lower)
    growing = bool(text) and _WORD.fullmatch(text[-1]) is not None  # the last word may go on ("the to|p")
    return _stutter(terms, words) or _dangling_inside(terms, growing) or _loop(words, max_phrase_repeats)


def _stutter(terms: list[str], words: list[str]) -> bool:
    """The same word twice ("a a", "a, a"), or the same run of terms twice in a row ("a large
    orange a large orange", ",,")."""
    if len(words) >= 2 and words[-1] == words[-2]:
        return True
    last = terms[-1] if terms else None
    return any(terms[-1 - n] == last and terms[-n:] == terms[-2 * n:-n] for n in range(1, len(terms) // 2 + 1))


def _dangling_inside(terms: list[str], growing: bool) -> bool:
    """A word that needs another right before a mark ("and a, circle"), or a determiner right
    before another function word ("a an", "the of"), judged once that word is complete."""
    if len(terms) >= 2 and terms[-2] in DANGLING and terms[-1] in _BREAKS:  # not "-" or "/": "on-screen"
        return True
    done = terms[:-1] if growing else terms
    return len(done) >= 2 and done[-2] in DETERMINERS and done[-1] in DANGLING


def _loop(words: list[str], repeats: int) -> bool:
    """A content word (not in ``FUNCTION_WORDS``) or a phrase of 2+ words more than ``repeats`` times."""
    if not words:
        return False
    if words[-1] not in FUNCTION_WORDS and words.count(words[-1]) > repeats:
        return True
    for n in range(2, len(words) // (repeats + 1) + 1):  # a phrase of n words, repeated
        tail = words[-n:]
        if sum(words[i] == tail[0] and words[i:i + n] == tail for i in range(len(words) - n + 1)) > repeats:
            return True
    return False


def dangling_end(text: str) -> bool:
    """True when ``text`` stops mid-phrase: on a blank, a comma or other separator, a word that
    needs another after it (``DANGLING``: "three shapes on a"), or a determiner followed only by
    ``MODIFIERS`` ("a small"). An empty text is not dangling."""
    if text != text.rstrip():
        return True
    if not text or _WORD.fullmatch(text[-1]) or text[-1] in _ENDS:
        words = _WORD.findall(text.lower())
        if not words or not text.lower().endswith(words[-1]):
            return False
        return words[-1] in DANGLING or _no_noun(words)
    return True


def _no_noun(words: list[str]) -> bool:
    """The words end on a determiner and one or more ``MODIFIERS`` ("a small", "the large red")."""
    for i in range(len(words) - 1, -1, -1):
        if words[i] in DETERMINERS:
            return i < len(words) - 1
        if words[i] not in MODIFIERS:
            return False
    return False


class DegenerationGuard:
    """Judges candidate tokens by the caption text they make, with the tokenizer's own decoding."""

    def __init__(self, tokenizer, eot_id: Optional[int] = None, pad_id: Optional[int] = None, lexicon=None):
        self.decode: Callable[[list[int]], str] = tokenizer.decode
        self.lexicon = lexicon  # a vlm.generation.lexicon.Lexicon: words stay within the model's training words
        self.eot_id = tokenizer.eot_id if eot_id is None else eot_id
        self.pad_id = getattr(tokenizer, "pad_id", 0) if pad_id is None else pad_id
        unk = getattr(tokenizer, "unk_id", None)
        self.refused = {i for i in (unk, getattr(tokenizer, "sot_id", None)) if i is not None and i >= 0}

    def acceptable(self, generated: list[int], token: int) -> bool:
        """Whether ``token`` may follow ``generated`` (ids after the start token, pad ids ignored)."""
        seq = [t for t in generated if t != self.pad_id]
        if token == self.eot_id:  # the caption may end only on a complete phrase
            return not dangling_end(self.decode(seq))
        if token in self.refused:
            return False
        before, after = self.decode(seq), self.decode(seq + [token])
        if after.strip() == before.strip() and not (before and after.startswith(before) and after != before):
            return False  # adds no text (a blank piece at the start, an empty piece)
        return not degenerate_text(after)

    def complete(self, seq: list[int]) -> list[int]:
        """``seq`` (a finished caption's ids) cut back to end on a complete phrase: a caption the
        length limit or a guard stopped loses its dangling tail ("three shapes on a" -> "three shapes")."""
        full = self.decode(seq)
        for keep in range(len(seq), 0, -1):
            text = full if keep == len(seq) else self.decode(seq[:keep])
            after = full[len(text):len(text) + 1] if full.startswith(text) else ""
            mid_word = bool(text and after and _WORD.fullmatch(text[-1]) and _WORD.fullmatch(after))
            if not mid_word and not dangling_end(text):  # "fro|m" is no place to cut "from"
                return seq[:keep]
        return []

    def fragment(self, generated: list[int], token: int) -> bool:
        """Whether ``token`` adds at most one visible character (a letter or a blank piece)."""
        seq = [t for t in generated if t != self.pad_id]
        before, after = self.decode(seq), self.decode(seq + [token])
        added = after[len(before):] if after.startswith(before) else after
        return len(added.strip()) <= 1

    def choose(self, logits: Tensor, generated: Tensor, finished: Tensor,
               pick: Callable[[Tensor], Tensor], greedy: bool = False,
               states: Optional[list] = None, model_logits: Optional[Tensor] = None) -> Tensor:
        """Next tokens (N,) from (N, V) ``logits``: ``pick`` (argmax or a sampler) redone without
        refused tokens; a row left with no acceptable token among ``CANDIDATES`` ends (end token),
        and so does, when ``greedy``, a row whose best acceptable token has under ``MIN_TOKEN_PROB``.
        ``states``: each row's lexicon node, when the caller keeps them (else worked out here).
        ``model_logits``: the model's own logits, before a repetition penalty reshaped them: the
        confidence test is the model's (a penalty below 1 puts all the mass on tokens already used)."""
        probs = (logits if model_logits is None else model_logits).softmax(-1) if greedy else None
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
