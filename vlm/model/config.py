"""Model configuration: one dataclass per tower, and named JSON architectures.

A model is described by a ``ModelConfig`` holding a ``VisionConfig`` (the ViT),
a ``TextConfig`` (the contrastive text transformer) and, for CoCa, a
``DecoderConfig`` (the caption decoder). ``model_type`` names the class to build
("clip": image and text towers only; "coca": plus the caption decoder).

Named architectures live as JSON files in ``vlm/model/model_configs/``;
``list_configs()`` lists them and ``get_config(name)`` loads one. Every dict
becomes a config through the one typed loader, ``vlm.io.configio`` (strict keys,
errors naming the file and the dotted key); ``ModelConfig.validate`` holds every
rule of a model config once, ``check_image_size`` the one rule for input
sizes, and ``check_vision_input`` the input rules it shares with the classifier
config. ``PreprocessConfig`` is the one description of preprocessing: the model
config's ``preprocess`` section (without a size: that is ``vision.image_size``)
and, via ``PreprocessConfig.for_model``, the transform a pipeline runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vlm.io import configio

CONFIG_DIR = Path(__file__).parent / "model_configs"
IGNORED_KEYS = ("name", "description")  # documentation keys of the JSON files in model_configs/
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = ("bicubic", "bilinear")
ACTIVATIONS = ("gelu", "quick_gelu")
TOKENIZERS = ("clip_bpe", "sentencepiece")


@dataclass
class VisionConfig:
    image_size: int = 224  # input resolution the position embeddings were trained at
    patch_size: int = 16  # P: the image is cut into P x P patches
    width: int = 768  # token width inside the ViT
    layers: int = 12  # number of pre-norm transformer blocks
    heads: int = 12  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * width
    act: str = "gelu"  # "gelu" or "quick_gelu" (OpenAI CLIP weights)
    cls_token: bool = True  # prepend a learned CLS token
    pool: str = "cls"  # "cls": CLS token summarises; "attn": attentional pooler (CoCa)
    attn_pool_queries: int = 256  # pooler queries: 1 contrastive + (n-1) decoder tokens
    attn_pool_heads: int = 8  # heads of the attentional pooler
    norm_eps: float = 1e-5  # LayerNorm epsilon
    norm_pre: bool = True  # LayerNorm before the blocks (CLIP's ln_pre); timm / HF ViT classifiers have none
    patch_bias: bool = False  # a bias in the patch embedding (timm / HF ViT classifiers have one)


@dataclass
class TextConfig:
    vocab_size: int = 49408  # token vocabulary (CLIP BPE: 49408)
    context_length: int = 77  # maximum tokens, including start/end tokens
    width: int = 512  # token width
    layers: int = 12  # number of causal transformer blocks
    heads: int = 8  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * width
    act: str = "gelu"  # "gelu" or "quick_gelu"
    pool: str = "eot"  # "eot": pool at the end-of-text token; "cls": appended CLS token (CoCa)
    eot_id: int = 49407  # end-of-text id, used by pool="eot"
    pad_id: int = 0  # padding id, masked out of the appended CLS token's attention
    cls_mask: str = "correct"  # pool="cls": "correct" masks padded keys; "legacy" shifts that
    # key mask one position right, as open_clip's released CoCa weights were trained
    norm_eps: float = 1e-5  # LayerNorm epsilon


@dataclass
class DecoderConfig:
    vocab_size: int = 49408  # output vocabulary of the LM head
    context_length: int = 76  # longest caption the decoder is trained on
    width: int = 512  # must equal the text tower width (it reads its token embeddings)
    layers: int = 12  # each layer: causal self-attention block + cross-attention block
    heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * width
    act: str = "gelu"  # "gelu" or "quick_gelu"
    norm_eps: float = 1e-5  # LayerNorm epsilon


@dataclass
class PreprocessConfig:
    """How an image becomes a model input tensor (matches open_clip's eval transform).

    In a ``ModelConfig`` the size is left out (None): the model's input size is
    ``vision.image_size``, and ``PreprocessConfig.for_model`` fills it in.
    """

    image_size: Optional[int] = None  # S: output is S x S; None in a model config (vision.image_size)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN  # per-channel normalisation mean (R, G, B)
    std: tuple[float, ...] = OPENAI_CLIP_STD  # per-channel normalisation std (R, G, B)
    resize_mode: str = "shortest"  # "shortest" (resize + center crop), "squash" or "longest" (pad)
    interpolation: str = "bicubic"  # resize filter: "bicubic" or "bilinear"
    crop_rounding: str = "round"  # center-crop offset: "round" (torchvision, open_clip) or "floor" (Hugging Face)
    crop_pct: float = 1.0  # resize to floor(image_size / crop_pct), then center-crop image_size (timm eval)

    def __post_init__(self) -> None:
        self.mean = tuple(float(x) for x in self.mean)
        self.std = tuple(float(x) for x in self.std)
        if self.image_size is not None:
            if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
                raise ValueError(f"image_size must be a positive whole number, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 values (R, G, B)")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std={list(self.std)}: every value must be positive")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        return configio.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "preprocess config") -> "PreprocessConfig":
        return configio.from_dict(cls, d, source)

    @classmethod
    def for_model(cls, model_cfg: "ModelConfig", image_size: Optional[int] = None) -> "PreprocessConfig":
        """The eval transform of a model: its preprocess section at ``image_size`` (default: the model's)."""
        size = model_cfg.vision.image_size if image_size is None else image_size
        return dataclasses.replace(model_cfg.preprocess, image_size=size)


PreprocessSpec = PreprocessConfig  # the former name of the model config's preprocess section


def check_image_size(size, patch_size: int) -> None:
    """The one rule for input sizes: each side a positive multiple of the patch size.

    ``size`` is an int or an (H, W) pair; raises ``ValueError`` naming the size and the patch.
    """
    sides = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    if all(isinstance(s, int) and not isinstance(s, bool) and s >= patch_size and s % patch_size == 0
           for s in sides):
        return
    shown = "x".join(str(s) for s in sides)
    raise ValueError(f"image size {shown} is not a multiple of the patch size {patch_size}"
                     if all(isinstance(s, int) and s > 0 for s in sides) else
                     f"image size {shown} is not a positive multiple of the patch size {patch_size}")


def check_vision_input(vision: VisionConfig, preprocess: PreprocessConfig) -> None:
    """The input rules of every config with a ViT and a preprocess section (model, classifier):
    ``vision.image_size`` a multiple of the patch size, and no second size in ``preprocess``."""
    try:
        check_image_size(vision.image_size, vision.patch_size)
    except ValueError:
        raise ValueError(f"vision.image_size={vision.image_size}: must be a multiple of "
                         f"vision.patch_size={vision.patch_size}") from None
    if preprocess.image_size is not None:
        raise ValueError("preprocess.image_size: leave it out; the model's input size is vision.image_size")


def vision_config_dict(cfg) -> dict[str, Any]:
    """``configio.to_dict`` of such a config, without ``preprocess.image_size`` (it is vision.image_size)."""
    d = configio.to_dict(cfg)
    del d["preprocess"]["image_size"]
    return d


@dataclass
class ModelConfig:
    model_type: str = "coca"  # "clip" (towers only) or "coca" (towers + caption decoder)
    embed_dim: int = 512  # shared image-text embedding size
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: Optional[DecoderConfig] = None  # present iff model_type == "coca"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # size: vision.image_size
    init_logit_scale: float = 2.6592  # log(1 / 0.07), as in CLIP
    tokenizer: str = "clip_bpe"  # the tokenizer kind: "clip_bpe" or "sentencepiece" (the one authority)

    def __post_init__(self):
        for name, cls in (("vision", VisionConfig), ("text", TextConfig),
                          ("decoder", DecoderConfig), ("preprocess", PreprocessConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, configio.from_dict(cls, value, "model config", prefix=f"{name}."))
        self.validate()

    def validate(self) -> None:
        """Every rule of a model config, once; messages start with the dotted key."""
        if self.model_type not in ("clip", "coca"):
            raise ValueError(f"model_type must be 'clip' or 'coca', got {self.model_type!r}")
        if (self.model_type == "coca") != (self.decoder is not None):
            raise ValueError("decoder: a 'coca' model needs a decoder config and a 'clip' model none")
        _positive(self, "embed_dim")
        _check_tower(self.vision, "vision", ("image_size", "patch_size", "width", "layers", "heads",
                                             "attn_pool_queries", "attn_pool_heads"))
        _check_tower(self.text, "text", ("vocab_size", "context_length", "width", "layers", "heads"))
        if self.decoder is not None:
            _check_tower(self.decoder, "decoder", ("vocab_size", "context_length", "width", "layers", "heads"))
            if self.decoder.width != self.text.width:
                raise ValueError("decoder.width must equal text.width: the decoder reads text token embeddings")
        check_vision_input(self.vision, self.preprocess)
        if self.vision.pool not in ("cls", "attn"):
            raise ValueError(f"vision.pool must be 'cls' or 'attn', got {self.vision.pool!r}")
        if self.vision.pool == "cls" and not self.vision.cls_token:
            raise ValueError("vision.pool='cls' needs vision.cls_token=true")
        if self.vision.pool == "attn" and self.embed_dim % self.vision.attn_pool_heads:
            raise ValueError(f"vision.attn_pool_heads={self.vision.attn_pool_heads}: must divide "
                             f"embed_dim={self.embed_dim}")
        if self.text.pool not in ("eot", "cls"):
            raise ValueError(f"text.pool must be 'eot' or 'cls', got {self.text.pool!r}")
        if self.text.cls_mask not in ("correct", "legacy"):
            raise ValueError(f"text.cls_mask must be 'correct' or 'legacy', got {self.text.cls_mask!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer={self.tokenizer!r}: must be one of {', '.join(TOKENIZERS)}")

    def to_dict(self) -> dict[str, Any]:
        return vision_config_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> "ModelConfig":
        return configio.from_dict(cls, d, source, ignore=IGNORED_KEYS)


def _positive(obj, name: str, where: str = "") -> None:
    value = getattr(obj, name)
    if value < 1:
        raise ValueError(f"{where}{name}={value}: must be at least 1")


def _check_tower(cfg, where: str, counts: tuple[str, ...]) -> None:
    for name in counts:
        _positive(cfg, name, f"{where}.")
    if cfg.width % cfg.heads:
        raise ValueError(f"{where}.width={cfg.width}: must be divisible by {where}.heads={cfg.heads}")
    if not cfg.mlp_ratio > 0:
        raise ValueError(f"{where}.mlp_ratio={cfg.mlp_ratio}: must be positive")
    if not cfg.norm_eps > 0:
        raise ValueError(f"{where}.norm_eps={cfg.norm_eps}: must be positive")
    if cfg.act not in ACTIVATIONS:
        raise ValueError(f"{where}.act={cfg.act!r}: must be one of {', '.join(ACTIVATIONS)}")


def list_configs() -> list[str]:
    """Names of the architectures shipped in ``vlm/model/model_configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_config(name: str) -> ModelConfig:
    """Load a named architecture, e.g. ``get_config("coca_ViT-B-32")``."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(list_configs())}")
    return ModelConfig.from_dict(json.loads(path.read_text()), source=str(path))
