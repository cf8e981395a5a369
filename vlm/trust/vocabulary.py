"""Words a model never learned: labels and prompt templates outside its training captions.

A checkpoint trained from scratch lists the words of its training captions
(``CheckpointMeta.caption_words``, see ``vlm.generation.lexicon``). A zero-shot label made of other
words ("zebra" for the shapes model) still gets an embedding, and it can win with a probability
of 1.000: the text tower maps an unknown word somewhere, and nothing there means "zebra". With a
word list, every label and template word outside it is named once, in one warning
(``UnseenWordsWarning``; the CLI prints it as one ``warning:`` line on stderr), and each label
carries a flag (``LabelWords.unseen``; ``"unseen"`` in ``vlm classify --json``). Words are compared
as the lexicon compares them (NFKC, case folded). A model without a list (a converted photo model)
is not checked: nothing says which words it knows.

    >>> check = check_label_words(["red star", "zebra"], ["one {}"], caption_words)
    >>> check.unseen          # (False, True)
    >>> check.warn("default")  # UnseenWordsWarning naming "zebra"
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

from vlm.generation.lexicon import normalize

_WORD = re.compile(r"[\w']+")
_FIELD = re.compile(r"\{[^{}]*\}")  # a template's "{}" slot (the label goes there)
SHOWN = 10  # at most this many unseen words are named in the line (then "and N more")


class UnseenWordsWarning(UserWarning):
    """Labels or templates use words the model was never trained on: their scores mean little."""

    cli_level = "warning"  # the CLI prints it as one "vlm COMMAND: warning: ..." line (vlm.cli.main)

    def __init__(self, name: str, words: Sequence[str], known: int):
        self.name, self.words, self.known = name, tuple(words), known
        super().__init__(self.cli_message())

    def cli_message(self) -> str:
        shown = ", ".join(repr(w) for w in self.words[:SHOWN])
        more = f" and {len(self.words) - SHOWN} more" if len(self.words) > SHOWN else ""
        return (f"{len(self.words)} word(s) of the labels or templates never appear in the {self.name} model's "
                f"training captions ({self.known} words): {shown}{more}; their scores mean little")


def words_of(text: str) -> list[str]:
    """The normalised words of ``text`` in order (a template's ``{}`` slot left out)."""
    return _WORD.findall(normalize(_FIELD.sub(" ", text)))


@dataclass(frozen=True)
class LabelWords:
    unseen: tuple[bool, ...]  # per label: True when one of its words is outside the list
    words: tuple[str, ...]  # every unseen word of the labels and templates, once, in order of first use

    def warn(self, name: str, known: int, stacklevel: int = 3) -> None:
        """One ``UnseenWordsWarning`` naming every unseen word (nothing when there is none)."""
        if self.words:
            warnings.warn(UnseenWordsWarning(name, self.words, known), stacklevel=stacklevel)


def check_label_words(labels: Sequence[str], templates: Sequence[str],
                      caption_words: Optional[Sequence[str]]) -> Optional[LabelWords]:
    """Which labels and template words are outside ``caption_words`` (None: no list, nothing checked)."""
    if caption_words is None:
        return None
    known = {w for word in caption_words for w in _WORD.findall(normalize(word))}
    unseen: dict[str, None] = {}  # ordered set
    flags = []
    for label in labels:
        new = [w for w in words_of(label) if w not in known]
        flags.append(bool(new))
        unseen.update(dict.fromkeys(new))
    for template in templates:
        unseen.update(dict.fromkeys(w for w in words_of(template) if w not in known))
    return LabelWords(tuple(flags), tuple(unseen))
