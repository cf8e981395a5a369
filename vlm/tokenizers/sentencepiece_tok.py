"""SentencePiece tokenizer for caption models trained from scratch.

``train_sentencepiece`` trains a unigram or BPE model in-process from an
iterable of captions and writes a loadable tokenizer directory.  Fixed ids:
pad = 0, unk = 1, sot (bos) = 2, eot (eos) = 3.  The model's normalizer is
NFKC with case folding (``nmt_nfkc_cf``), so "A Red Circle" and
"a red circle" give the same ids, and decoding yields lower-case text.

``sentencepiece`` is imported only when a model is trained or loaded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

from vlm.tokenizers.base import DEFAULT_CONTEXT_LENGTH, Tokenizer

MODEL_FILENAME = "spm.model"
PAD_ID, UNK_ID, SOT_ID, EOT_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model behind the ``Tokenizer`` interface."""

    type_name = "sentencepiece"

    def __init__(
        self,
        model_file: str | os.PathLike | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        *,
        model_proto: bytes | None = None,
    ) -> None:
        import sentencepiece as spm

        if (model_file is None) == (model_proto is None):
            raise ValueError("give exactly one of model_file or model_proto")
        if model_proto is None:
            model_proto = Path(model_file).read_bytes()  # type: ignore[arg-type]
        self.model_file = Path(model_file) if model_file is not None else None
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.context_length = int(context_length)
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id = self._sp.pad_id()
        self.sot_id = self._sp.bos_id()
        self.eot_id = self._sp.eos_id()
        self.unk_id = self._sp.unk_id()
        if self.pad_id != PAD_ID or self.sot_id < 0 or self.eot_id < 0:
            raise ValueError(
                "SentencePiece model must define pad=0, bos and eos "
                f"(got pad={self.pad_id}, bos={self.sot_id}, eos={self.eot_id})"
            )

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def _decode_ids(self, ids: list[int]) -> str:
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._sp.decode([i for i in ids if i != self.pad_id])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def token_texts(self) -> list[str | None]:
        sp = self._sp
        return [None if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)
                else sp.id_to_piece(i).replace("\u2581", " ") for i in range(self.vocab_size)]

    def _write_files(self, directory: Path) -> dict[str, Any]:
        (directory / MODEL_FILENAME).write_bytes(self._proto)
        return {"model_file": MODEL_FILENAME}


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    character_coverage: float = 1.0,
    num_threads: int | None = None,
    **trainer_kwargs: Any,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on ``texts`` and save it to ``out_dir``.

    ``out_dir`` receives ``spm.model`` and ``tokenizer_config.json`` (load it
    back with ``vlm.tokenizers.load_tokenizer``).  ``vocab_size`` is an upper
    bound: with ``hard_vocab_limit=False`` (the default here) a small corpus
    gives a smaller vocabulary instead of an error; read ``.vocab_size``.
    Extra keyword arguments go to ``SentencePieceTrainer.train`` (for example
    ``byte_fallback=True``, ``hard_vocab_limit=True``).
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    options: dict[str, Any] = dict(
        vocab_size=int(vocab_size),
        model_type=model_type,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=SOT_ID,
        eos_id=EOT_ID,
        normalization_rule_name="nmt_nfkc_cf",
        character_coverage=character_coverage,
        hard_vocab_limit=False,
        num_threads=num_threads or min(4, os.cpu_count() or 1),
        minloglevel=2,
    )
    options.update(trainer_kwargs)
    lines = (" ".join(t.split()) for t in texts)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(line for line in lines if line), model_writer=writer, **options
    )
    tokenizer = SentencePieceTokenizer(model_proto=writer.getvalue(), context_length=context_length)
    tokenizer.save(out_dir)
    tokenizer.model_file = Path(out_dir) / MODEL_FILENAME
    return tokenizer
