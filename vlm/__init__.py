"""vlm: image captioning and CLIP-style image-text models.

One ViT image encoder shared by a contrastive text tower and a caption decoder
(CoCa, Yu et al. 2022). ``vlm.load(name_or_dir)`` returns a pipeline with
``caption``, ``classify`` and ``similarity`` (``vlm.GenerationConfig``: the caption options);
the ``vlm`` command mirrors it.

Imports stay light on purpose: ``import vlm`` pulls in nothing beyond the
standard library until an attribute is used.
"""

__version__ = "0.1.0"

__all__ = ["GenerationConfig", "load", "__version__"]


def __getattr__(name):
    if name == "load":
        from vlm.api import load

        return load
    if name == "GenerationConfig":  # the options of Pipeline.caption (no torch)
        from vlm.generation.config import GenerationConfig

        return GenerationConfig
    raise AttributeError(f"module 'vlm' has no attribute {name!r}")


def __dir__():
    """The public API (loaded lazily, so plain ``dir`` would not show it) and the module's own names."""
    return sorted(set(globals()) | set(__all__))
