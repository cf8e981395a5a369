"""Caption words: decoding never spells a word the model was not trained on.

Far from its training data a small captioner fuses pieces into non-words ("a largerom left to
right", "a circle andheckered background"): each piece is plausible after the last, the word is
not. A checkpoint trained from scratch records the words of its training captions
(``CheckpointMeta.caption_words``, filled by the training export); a ``Lexicon`` over them,
a trie of the words, keeps every caption inside that list while it decodes:

- within a word, a token may only extend the word to a prefix of a known word;
- a token that ends the word (a space, a comma) or the end token is allowed only when the word
  so far is a whole known word.

The allowed tokens of each trie node are worked out once, the first time a caption reaches that
node, and kept (a bool row over the vocabulary), so a decoding step costs one lookup per row.
Words are compared after NFKC normalisation and case folding, as the SentencePiece tokenizers of
vlm normalise text. A token whose text is not whole UTF-8 (a CLIP byte piece) never extends a
word, so non-ASCII words a byte-level tokenizer spells in pieces are not produced.

    >>> lex = Lexicon(["a", "large", "red", "square"], tokenizer)
    >>> lex.state(tokenizer.encode("a lar"))   # a trie node: "lar" is a prefix of "large"
    >>> lex.allowed([node], width=128)         # (1, 128) bool: which tokens may come next
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

_WORD = re.compile(r"[\w']+")
_WORD_CHAR = re.compile(r"[\w']")
ROOT = 0  # the trie node between words


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def caption_words(captions: Iterable[str]) -> list[str]:
    """The sorted distinct words (letters, digits, apostrophes; normalised) of ``captions``."""
    return sorted({w for c in captions for w in _WORD.findall(normalize(c))})


class Lexicon:
    """A trie over ``words`` and the tokens of ``tokenizer`` (``token_texts()``) it allows."""

    def __init__(self, words: Iterable[str], tokenizer):
        self.tokenizer = tokenizer
        self.eot_id = int(tokenizer.eot_id)
        self.pad_id = int(getattr(tokenizer, "pad_id", 0))
        self.texts = [None if t is None else normalize(t) for t in tokenizer.token_texts()]
        self.children: list[dict[str, int]] = [{}]
        self.terminal: list[bool] = [True]  # the root: between words, a place a caption may end
        for word in words:
            for part in _WORD.findall(normalize(word)):
                node = ROOT
                for ch in part:
                    nxt = self.children[node].get(ch)
                    if nxt is None:
                        nxt = len(self.children)
                        self.children[node][ch] = nxt
                        self.children.append({})
                        self.terminal.append(False)
                    node = nxt
                self.terminal[node] = True
        self._next: dict[int, dict[int, int]] = {}
        self._rows: dict[tuple[int, int], Tensor] = {}

    @property
    def num_words(self) -> int:
        return sum(self.terminal) - 1

    def _walk(self, node: int, text: str) -> Optional[int]:
        for ch in text:
            if _WORD_CHAR.match(ch):
                node = self.children[node].get(ch, -1)
                if node < 0:
                    return None
            elif not self.terminal[node]:
                return None  # the word ends here, but is no whole word
            else:
                node = ROOT
        return node

    def transitions(self, node: int) -> dict[int, int]:
        """Allowed token -> the node it leads to, for one trie node (worked out once)."""
        table = self._next.get(node)
        if table is None:
            table = {}
            for tok, text in enumerate(self.texts):
                if text:
                    nxt = self._walk(node, text)
                    if nxt is not None:
                        table[tok] = nxt
            if self.terminal[node]:
                table[self.eot_id] = node
            self._next[node] = table
        return table

    def state(self, seq: Sequence[int]) -> Optional[int]:
        """The node after ``seq`` (pad ids skipped), or None where ``seq`` already left the list."""
        node = ROOT
        for tok in seq:
            if tok == self.pad_id:
                continue
            if tok == self.eot_id:
                break
            nxt = self.transitions(node).get(tok)
            if nxt is None:
                return None
            node = nxt
        return node

    def advance(self, node: Optional[int], tok: int) -> Optional[int]:
        """The node after ``tok`` from ``node`` (end and pad ids stay; None: left the list)."""
        if node is None or tok == self.pad_id or tok == self.eot_id:
            return node
        return self.transitions(node).get(tok)

    def allowed(self, states: Sequence[Optional[int]], width: int, device=None) -> Tensor:
        """(len(states), width) bool: the tokens each row may take next (a None state: all)."""
        rows = []
        for node in states:
            key = (-1 if node is None else node, width)
            row = self._rows.get(key)
            if row is None:
                row = torch.ones(width, dtype=torch.bool) if node is None else torch.zeros(width, dtype=torch.bool)
                if node is not None:
                    ids = [t for t in self.transitions(node) if t < width]
                    row[ids] = True
                self._rows[key] = row
            rows.append(row)
        out = torch.stack(rows) if rows else torch.zeros(0, width, dtype=torch.bool)
        return out if device is None else out.to(device)

    def whole_words(self, seq: list[int]) -> list[int]:
        """``seq`` cut after its last token that ends on a whole word (a caption stopped mid-word,
        by a guard or by the length limit, loses the unfinished word)."""
        node, keep = ROOT, 0
        for i, tok in enumerate(seq):
            if tok in (self.pad_id, self.eot_id):
                continue
            nxt = self.transitions(node).get(tok)
            if nxt is None:
                return seq  # not decoded under this list: left as it is
            node = nxt
            if self.terminal[node]:
                keep = i + 1
        return seq[:keep]
