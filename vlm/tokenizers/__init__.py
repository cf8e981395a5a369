"""Tokenizers behind one interface: CLIP byte-level BPE and SentencePiece.

``load_tokenizer(directory)`` reads ``tokenizer_config.json`` written by
``Tokenizer.save`` and builds the matching tokenizer.  Importing this package
loads only the standard library; regex, ftfy, sentencepiece and torch are
imported when a tokenizer is built or used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlm.tokenizers.base import CONFIG_NAME, DEFAULT_CONTEXT_LENGTH, Tokenizer
from vlm.tokenizers.clip_bpe import CLIPBPETokenizer, find_clip_bpe_vocab
from vlm.tokenizers.sentencepiece_tok import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "CONFIG_NAME",
    "CLIPBPETokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "find_clip_bpe_vocab",
    "load_tokenizer",
    "train_sentencepiece",
]


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Build the tokenizer saved in ``directory`` (dispatches on the config's ``type``)."""
    path = Path(directory)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (not a saved tokenizer directory)")
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping of keys to values")
    kind = config.get("type")
    context_length = int(config.get("context_length") or DEFAULT_CONTEXT_LENGTH)
    if kind == CLIPBPETokenizer.type_name:
        return CLIPBPETokenizer(_named_file(path, config, "vocab_file", "bpe_simple_vocab_16e6.txt.gz"),
                                context_length)
    if kind == SentencePieceTokenizer.type_name:
        return SentencePieceTokenizer(_named_file(path, config, "model_file", "spm.model"), context_length)
    raise ValueError(f"{config_path}: unknown tokenizer type {kind!r} (expected 'clip_bpe' or 'sentencepiece')")


def _named_file(directory: Path, config: dict, key: str, default: str) -> Path:
    """The vocabulary/model file tokenizer_config.json names; a missing one is named as such."""
    file = directory / str(config.get(key, default))
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (the {config.get('type')} model that "
                                f"{directory / CONFIG_NAME} names)")
    return file
