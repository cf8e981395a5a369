"""Caption decoding: the search loops, their options, and the rules that keep text sound.

    config.py   GenerationConfig (every option, default and bound; no torch) and SpecialTokens
    decode.py   generate(): greedy, beam search, top-k/top-p sampling over a key/value cache;
                caption_texts(): the one guarded path every caption of vlm takes
    guards.py   refuse degenerate continuations (stutter, loops, dangling words); cut to a complete phrase
    lexicon.py  spell only words the checkpoint was trained on

``from vlm.generation import GenerationConfig, generate``. ``generate`` (and torch) load on first use.
"""

from vlm.generation.config import GenerationConfig, SpecialTokens

__all__ = ["GenerationConfig", "SpecialTokens", "caption_texts", "generate"]


def __getattr__(name):
    if name in ("generate", "caption_texts"):
        from vlm.generation import decode

        return getattr(decode, name)
    raise AttributeError(f"module 'vlm.generation' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
