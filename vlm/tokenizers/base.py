"""The tokenizer interface shared by the CLIP BPE and SentencePiece tokenizers.

A ``Tokenizer`` turns text into ids (``encode``, no special tokens) and back
(``decode``), and batches text into a right-padded ``(B, L)`` LongTensor the
way open_clip's ``tokenize`` does: ``[sot] + encode(text) + [eot]``, cut to
``L`` with the last kept token forced to ``eot``, padded with ``pad_id`` (0).

``save(directory)`` writes ``tokenizer_config.json`` plus the vocabulary or
model file; ``vlm.tokenizers.load_tokenizer(directory)`` reads it back.

torch is imported only inside ``__call__``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

CONFIG_NAME = "tokenizer_config.json"
DEFAULT_CONTEXT_LENGTH = 77


def _as_id_list(ids: Any) -> list[int]:
    """A 1-D sequence of ids (list, tuple, numpy array or tensor) as a list of ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], (list, tuple)):
        raise ValueError("decode() takes one sequence of ids; use batch_decode() for a batch")
    return [int(i) for i in ids]


class Tokenizer(ABC):
    """Abstract text tokenizer with CLIP-style special tokens and batching."""

    #: ``"type"`` written to tokenizer_config.json; subclasses set it.
    type_name: ClassVar[str] = ""

    vocab_size: int
    sot_id: int
    eot_id: int
    pad_id: int = 0
    context_length: int = DEFAULT_CONTEXT_LENGTH

    # ------------------------------------------------------------------ subclass API

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids, without sot/eot and without truncation."""

    @abstractmethod
    def _decode_ids(self, ids: list[int]) -> str:
        """Ids already stripped of sot/eot/padding -> text."""

    @abstractmethod
    def _write_files(self, directory: Path) -> dict[str, Any]:
        """Write the vocabulary/model file(s); return extra config entries naming them."""

    def token_texts(self) -> list[str | None]:
        """The text each id adds to a caption, a word boundary written as a space (``" a"``,
        ``"rge"``, ``"ge "``); None for an id that adds no text of its own (special tokens, bytes).
        ``vlm.generation.lexicon`` reads it to keep decoded words within a word list."""
        raise NotImplementedError(f"{type(self).__name__} does not list its token texts")

    # ------------------------------------------------------------------ shared behaviour

    def _strip_special(self, ids: list[int]) -> list[int]:
        """Cut at the first eot, drop sot, drop trailing padding."""
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        ids = [i for i in ids if i != self.sot_id]
        while ids and ids[-1] == self.pad_id:
            ids.pop()
        return ids

    def decode(self, ids: Sequence[int] | Any) -> str:
        """Ids -> text; stops at eot and drops sot and padding."""
        return self._decode_ids(self._strip_special(_as_id_list(ids)))

    def batch_decode(self, sequences: Iterable[Sequence[int]] | Any) -> list[str]:
        """Decode each row of a (B, L) tensor/array or each sequence of a list."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq) for seq in sequences]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> "torch.LongTensor":
        """Tokenize into a (B, L) LongTensor exactly like ``open_clip.tokenize``.

        Each row is ``[sot] + encode(text) + [eot]``; rows longer than ``L``
        are cut to ``L`` tokens and the last one is replaced by ``eot``;
        shorter rows are right-padded with ``pad_id``.
        """
        import torch

        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if not length or length < 1:
            raise ValueError(f"context_length must be a positive integer, got {length!r}")
        rows: list[list[int]] = []
        for text in texts:
            tokens = [self.sot_id, *self.encode(text), self.eot_id]
            if len(tokens) > length:
                tokens = tokens[:length]
                tokens[-1] = self.eot_id
            tokens.extend([self.pad_id] * (length - len(tokens)))
            rows.append(tokens)
        if not rows:
            return torch.zeros(0, length, dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer_config.json and the vocabulary/model file into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"type": self.type_name, "context_length": self.context_length}
        config.update(self._write_files(path))
        with open(path / CONFIG_NAME, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )
