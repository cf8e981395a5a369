"""CLIP's byte-level BPE tokenizer (49408 tokens), written for vlm.

Gives the same ids as open_clip's ``SimpleTokenizer`` with its default
"lower" cleaning: ``ftfy.fix_text``, ``html.unescape`` twice, strip,
whitespace collapse, lower-case; the same pre-tokenizing regex; byte-to-
unicode mapping; greedy lowest-rank merges.  Ids: 0..255 single bytes,
256..511 bytes ending a word (``</w>``), then the merges, then
``<start_of_text>`` = 49406 and ``<end_of_text>`` = 49407.  Padding is 0.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` is found inside the
installed open_clip package without importing it, or given explicitly;
``save()`` copies it next to the config so a checkpoint stands alone.

``regex`` is imported when the tokenizer is built, ``ftfy`` on first encode.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from vlm.tokenizers.base import DEFAULT_CONTEXT_LENGTH, Tokenizer

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48894 lines after the header
_CACHE_LIMIT = 200_000


def find_clip_bpe_vocab() -> Path:
    """Path of the CLIP merges file shipped in open_clip_torch, found without importing it.

    ``importlib.util.find_spec`` on a top-level package only locates it; the
    package's ``__init__`` (which pulls in torchvision) is not executed.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / VOCAB_FILENAME for p in spec.submodule_search_locations]
    candidates += [Path(p) / "open_clip" / VOCAB_FILENAME for p in sys.path if p]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"cannot find CLIP BPE vocabulary {VOCAB_FILENAME}: install open_clip_torch "
        "or pass vocab_file= (a saved tokenizer directory contains a copy)"
    )


def _byte_alphabet() -> list[tuple[int, str]]:
    """(byte, char) pairs in vocabulary order.

    Bytes that are visible Latin-1 characters stand for themselves and come
    first; the remaining bytes (controls, space, NBSP, soft hyphen) are given
    the code points 256, 257, ... in byte order and come after.
    """
    visible = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    hidden = [b for b in range(256) if b not in set(visible)]
    pairs = [(b, chr(b)) for b in visible]
    pairs += [(b, chr(256 + k)) for k, b in enumerate(hidden)]
    return pairs


def _read_merges(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1 : 1 + _NUM_MERGES]:  # line 0 is a version header
        parts = line.split()
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


class CLIPBPETokenizer(Tokenizer):
    """CLIP byte-level BPE; ids identical to ``open_clip.tokenize``."""

    type_name = "clip_bpe"

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ) -> None:
        import regex

        self.vocab_file = Path(vocab_file) if vocab_file is not None else find_clip_bpe_vocab()
        self.context_length = int(context_length)

        alphabet = _byte_alphabet()
        self._byte_to_char = {b: c for b, c in alphabet}
        self._char_to_byte = {c: b for b, c in alphabet}
        merges = _read_merges(self.vocab_file)
        pieces = [c for _, c in alphabet]
        pieces += [c + END_OF_WORD for _, c in alphabet]
        pieces += [a + b for a, b in merges]
        pieces += [SOT_TOKEN, EOT_TOKEN]
        self._piece_to_id = {p: i for i, p in enumerate(pieces)}
        self._id_to_piece = pieces
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.vocab_size = len(pieces)
        self.sot_id = self._piece_to_id[SOT_TOKEN]
        self.eot_id = self._piece_to_id[EOT_TOKEN]
        self.pad_id = 0
        self._special = {SOT_TOKEN: self.sot_id, EOT_TOKEN: self.eot_id}
        # Same pre-tokenizer as CLIP, special tokens first (so literal
        # "<end_of_text>" in a caption becomes the eot id, as in open_clip).
        self._pattern = regex.compile(
            "|".join(regex.escape(t) for t in self._special)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ encoding

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's "lower" cleaning: ftfy, double HTML unescape, whitespace collapse, lower."""
        import ftfy

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    def _merge(self, word: str) -> list[int]:
        """BPE-encode one pre-token (already mapped to byte characters)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        ranks = self._ranks
        while len(symbols) > 1:
            best_rank = None
            best_pair = None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            first, second = best_pair
            merged: list[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self._piece_to_id[s] for s in symbols]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        to_char = self._byte_to_char
        for piece in self._pattern.findall(self.clean(text)):
            special = self._special.get(piece)
            if special is not None:
                ids.append(special)
                continue
            ids.extend(self._merge("".join(to_char[b] for b in piece.encode("utf-8"))))
        return ids

    # ------------------------------------------------------------------ decoding

    def _decode_ids(self, ids: list[int]) -> str:
        """Join pieces; each word end (``</w>``) becomes one space; no trailing space.

        open_clip's ``decode`` leaves a space after every word, the last one
        included; here the final space is removed, so
        ``decode(ids) == open_clip_decode(ids).rstrip(" ")``.
        """
        out = bytearray()
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            piece = self._id_to_piece[i]
            if piece in self._special:
                out += piece.encode("utf-8")
                continue
            end_of_word = piece.endswith(END_OF_WORD)
            if end_of_word:
                piece = piece[: -len(END_OF_WORD)]
            out += bytes(self._char_to_byte[c] for c in piece)
            if end_of_word:
                out += b" "
        return out.decode("utf-8", errors="replace").rstrip(" ")

    def token_texts(self) -> list[str | None]:
        """A piece that is not whole UTF-8 (part of one character) gives None."""
        out: list[str | None] = []
        for piece in self._id_to_piece:
            if piece in self._special:
                out.append(None)
                continue
            end = piece.endswith(END_OF_WORD)
            raw = bytes(self._char_to_byte[c] for c in (piece[: -len(END_OF_WORD)] if end else piece))
            try:
                out.append(raw.decode("utf-8") + (" " if end else ""))
            except UnicodeDecodeError:
                out.append(None)
        return out

    # ------------------------------------------------------------------ saving

    def _write_files(self, directory: Path) -> dict[str, Any]:
        target = directory / VOCAB_FILENAME
        if not (target.exists() and os.path.samefile(target, self.vocab_file)):
            shutil.copyfile(self.vocab_file, target)
        return {"vocab_file": VOCAB_FILENAME}
