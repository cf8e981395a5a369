"""Model configuration: one dataclass per tower, and named JSON architectures.

A model is described by a ``ModelConfig`` holding a ``VisionConfig`` (the ViT),
a ``TextConfig`` (the contrastive text transformer) and, for CoCa, a
``DecoderConfig`` (the caption decoder). ``model_type`` names the class to build
("clip": image and text towers only; "coca": plus the caption decoder).

Named architectures live as JSON files in ``vlm/model_configs/``;
``list_configs()`` lists them and ``get_config(name)`` loads one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CONFIG_DIR = Path(__file__).parent / "model_configs"


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
class PreprocessSpec:
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)  # per-channel normalisation mean
    std: tuple = (0.26862954, 0.26130258, 0.27577711)  # per-channel normalisation std
    resize_mode: str = "shortest"  # "shortest" (resize + center crop), "squash" or "longest"
    interpolation: str = "bicubic"  # resize filter
    crop_rounding: str = "round"  # center-crop offset: "round" (torchvision, open_clip) or "floor" (Hugging Face)
    crop_pct: float = 1.0  # resize to floor(image_size / crop_pct), then center-crop image_size (timm eval)


@dataclass
class ModelConfig:
    model_type: str = "coca"  # "clip" (towers only) or "coca" (towers + caption decoder)
    embed_dim: int = 512  # shared image-text embedding size
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: Optional[DecoderConfig] = None  # present iff model_type == "coca"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    init_logit_scale: float = 2.6592  # log(1 / 0.07), as in CLIP
    tokenizer: str = "clip_bpe"  # tokenizer kind the architecture expects

    def __post_init__(self):
        for name, cls in (("vision", VisionConfig), ("text", TextConfig),
                          ("decoder", DecoderConfig), ("preprocess", PreprocessSpec)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value))
        if isinstance(self.preprocess.mean, list):
            self.preprocess.mean = tuple(self.preprocess.mean)
            self.preprocess.std = tuple(self.preprocess.std)
        self.validate()

    def validate(self) -> None:
        if self.model_type not in ("clip", "coca"):
            raise ValueError(f"model_type must be 'clip' or 'coca', got {self.model_type!r}")
        if (self.model_type == "coca") != (self.decoder is not None):
            raise ValueError("a 'coca' model needs a decoder config and a 'clip' model none")
        if self.decoder is not None and self.decoder.width != self.text.width:
            raise ValueError("decoder.width must equal text.width: the decoder reads text token embeddings")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError("vision.image_size must be a multiple of vision.patch_size")
        if self.vision.pool not in ("cls", "attn"):
            raise ValueError(f"vision.pool must be 'cls' or 'attn', got {self.vision.pool!r}")
        if self.vision.pool == "cls" and not self.vision.cls_token:
            raise ValueError("vision.pool='cls' needs vision.cls_token=true")
        if self.text.pool not in ("eot", "cls"):
            raise ValueError(f"text.pool must be 'eot' or 'cls', got {self.text.pool!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known - {"name", "description"}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in known})


def list_configs() -> list[str]:
    """Names of the architectures shipped in ``vlm/model_configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_config(name: str) -> ModelConfig:
    """Load a named architecture, e.g. ``get_config("coca_ViT-B-32")``."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(list_configs())}")
    return ModelConfig.from_dict(json.loads(path.read_text()))
