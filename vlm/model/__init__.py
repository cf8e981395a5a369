"""The model core: configs, layers, the ViT, the text tower, the caption decoder, CLIP and CoCa.

    config.py         ModelConfig and its tower dataclasses; named architectures in model_configs/
    layers.py         attention (SDPA, key/value cache), MLP, pre-norm blocks
    vit.py            the ViT: patch embedding, CLS token or attentional pooler, position-embedding resize
    text.py           the contrastive text tower
    decoder.py        the caption decoder (self- and cross-attention, LM head)
    coca.py           CLIP and CoCa; forward returns one typed ModelOutput; create_model
    packed_linear.py  fused linear weights for cached decoding on CPU

``vlm.model.create_model("coca_ViT-B-32")`` builds a named architecture. Importing this package
loads nothing: the names below resolve on first use, so ``vlm.model.config`` stays torch-free.
"""

_EXPORTS = {
    "create_model": "vlm.model.coca",
    "CLIP": "vlm.model.coca",
    "CoCa": "vlm.model.coca",
    "ModelOutput": "vlm.model.coca",
    "ModelConfig": "vlm.model.config",
    "get_config": "vlm.model.config",
    "list_configs": "vlm.model.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlm.model' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
