"""Caption decoding options, ``GenerationConfig``, and the tokenizer's ``SpecialTokens``.

One dataclass holds every option with its default, help text and bounds; the API
(``Pipeline.caption``, ``vlm.generation.decode.generate``) takes it and ``vlm caption``'s flags are
derived from its fields (``vlm.cli.options``). Beam search with a length penalty follows Wu et al.
2016 (GNMT), the repetition penalty CTRL (Keskar et al. 2019), nucleus sampling Holtzman et al. 2020.
No torch import here, so building the command line stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

from vlm.errors import InvalidOption

MAX_TOKENS_LIMIT = 1024  # longest caption anyone may ask for; a model's own context is usually shorter
MAX_BEAMS = 64  # beam search keeps beams x batch rows (and their caches) at every step
# Past these bounds a value only says "greedy", "uniform" or "never/always repeat" with more digits: it is
# refused, not clamped. (Decoding's arithmetic stays finite for any value anyway: vlm.generation.decode.)
TEMPERATURE_RANGE = (0.01, 100)  # logits are divided by it: x100 already makes sampling all but greedy
PENALTY_RANGE = (0.1, 10)  # a seen token's logit is divided (if negative, multiplied) by it: 10x either way
LENGTH_PENALTY_LIMIT = 10  # |exponent|: 1024 ** 10 is about 1e30, far inside a float


def _option(default, help: str, **limits):
    """A generation option: its default, its help text and its bounds, written once.

    The CLI's flags are derived from these fields (``vlm.cli.options``), so every option is
    reachable from both the API and the command line, with one default.
    """
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class GenerationConfig:
    """How captions are decoded; the API's ``Pipeline.caption`` and ``vlm caption`` both take it."""

    max_tokens: int = _option(30, "longest caption, in tokens (the end token included)", low=1,
                              high=MAX_TOKENS_LIMIT)
    min_tokens: int = _option(0, "shortest caption, in tokens: the end token is forbidden before", low=0)
    beams: int = _option(1, "beam search with this many beams (1: greedy)", low=1, high=MAX_BEAMS)
    top_p: Optional[float] = _option(None, "nucleus sampling: keep the smallest set of tokens with this "
                                     "probability mass", low=0.0, high=1.0, open_low=True)
    top_k: Optional[int] = _option(None, "sample from the K most likely tokens", low=1)
    temperature: float = _option(1.0, "sampling temperature (0.01: all but greedy; 100: all but uniform)",
                                 low=TEMPERATURE_RANGE[0], high=TEMPERATURE_RANGE[1])
    repetition_penalty: float = _option(1.0, "> 1 discourages tokens already generated, < 1 favours them "
                                        "(CTRL); 1 is off", low=PENALTY_RANGE[0], high=PENALTY_RANGE[1])
    length_penalty: float = _option(1.0, "beam scores are logprob / length ** this (0: no length "
                                    "normalisation; < 0 favours short captions)",
                                    low=-LENGTH_PENALTY_LIMIT, high=LENGTH_PENALTY_LIMIT)
    seed: Optional[int] = _option(None, "sampling seed, for reproducible samples", low=0, high=2**63 - 1)
    no_repeat_ngram: int = _option(0, "> 0: a token may not repeat an n-gram of this many tokens "
                                   "(vlm.generation.guards; 0 is off)", low=0, high=MAX_TOKENS_LIMIT)
    block_degenerate: bool = _option(True, "refuse degenerate text while decoding (blank runs, stutter, "
                                     "loops, words the checkpoint was not trained on; "
                                     "vlm.generation.guards)")

    @property
    def sampling(self) -> bool:
        return self.top_p is not None or self.top_k is not None

    def validate(self) -> "GenerationConfig":
        """Raise ``InvalidOption`` naming the first option that cannot work; returns self."""
        for f in fields(self):
            _check_option(f, getattr(self, f.name))
        if self.min_tokens > self.max_tokens:
            raise InvalidOption("min_tokens", self.min_tokens, f"must be at most max_tokens ({self.max_tokens})")
        if self.beams > 1 and self.sampling:
            raise InvalidOption("beams", self.beams, "beam search cannot be combined with top-p or top-k sampling")
        return self


def _check_option(f, value) -> None:
    """One field against its type and its bounds (``low``/``high`` in the field's metadata)."""
    if str(f.type) == "bool":
        if not isinstance(value, bool):
            raise InvalidOption(f.name, value, f"must be True or False, not {type(value).__name__}")
        return
    base = {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float}[str(f.type)]
    if value is None:
        if "Optional" not in str(f.type):
            raise InvalidOption(f.name, value, f"must be {'an integer' if base is int else 'a number'}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if base is float else int):
        kind = "an integer" if base is int else "a number"
        raise InvalidOption(f.name, value, f"must be {kind}, not {type(value).__name__}")
    if base is float and not math.isfinite(value):
        raise InvalidOption(f.name, value, "must be a finite number")
    low, high, open_low = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("open_low", False)
    if low is not None and (value <= low if open_low else value < low):
        raise InvalidOption(f.name, value, f"must be {'greater than' if open_low else 'at least'} {low}")
    if high is not None and value > high:
        raise InvalidOption(f.name, value, f"must be at most {high}")


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids decoding needs, read from the tokenizer once."""

    sot: int  # start of text: the first input token
    eot: int  # end of text: decoding stops after it
    pad: int = 0  # written after a row has finished

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        """From a ``vlm.tokenizers`` tokenizer (anything with ``sot_id``, ``eot_id``, ``pad_id``)."""
        if isinstance(tokenizer, SpecialTokens):
            return tokenizer
        return cls(int(tokenizer.sot_id), int(tokenizer.eot_id), int(tokenizer.pad_id))
