"""Training configuration: a ``TrainConfig`` dataclass read from YAML plus ``key=value`` overrides.

The recipe follows CoCa (Yu et al. 2022): a contrastive loss and a captioning
loss on one image encoder, AdamW with decoupled weight decay and a cosine
schedule with linear warmup (Loshchilov & Hutter 2019).

    cfg = load_train_config("configs/shapes_tiny.yaml", ["lr=3e-4", "model.vision.image_size=96"])

The file and the overrides go through the one config loader (``vlm.io.configio``):
unknown keys and wrong types are refused naming the file (or the override) and
the key. Dotted keys reach nested sections (``data.batch_size=32``); values are
parsed as YAML scalars, so ``steps=100``, ``freeze=[visual]`` and
``init_from=null`` work. ``model.*`` keys override the named architecture
(stored in ``model_overrides``); the model config is the one authority for the
architecture, so two short keys are spelled out there:

- ``tokenizer: sentencepiece`` is ``model.tokenizer: sentencepiece`` (the kind
  the exported config.json records);
- ``image_size: N`` is ``model.vision.image_size: N`` (with ``init_from``: the
  checkpoint's position embeddings are resampled to N).

Run: ``accelerate launch scripts/train.py --config FILE``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vlm.io import configio
from vlm.classify.train_config import ClassifyConfig, check_applies
from vlm.errors import first_line

MIXED_PRECISION = ("no", "bf16", "fp16")
TOWERS = ("visual", "text", "decoder")
DATA_KINDS = ("shapes", "coco", "karpathy", "hf")
SHORT_KEYS = {"tokenizer": "tokenizer", "image_size": "vision.image_size"}  # key -> model.* key
DEFAULT_MODEL = "tiny"  # the architecture when neither model nor init_from is given


@dataclass
class DataConfig:
    kind: str = "shapes"  # shapes (a dir `vlm data shapes` wrote, read as coco; checked) | coco | karpathy | hf
    root: str = "data/shapes"  # COCO-format dir (annotations/captions.json + images/) or a COCO root
    train_split: str = "train"  # COCO root: annotations/captions_{split}2017.json, images in {split}2017/
    val_root: Optional[str] = None  # a separate COCO-format dir for validation (shapes)
    val_split: Optional[str] = "val"  # None: no validation
    karpathy_json: Optional[str] = None  # kind=karpathy: dataset_coco.json (None: root/dataset_coco.json), images under root
    hf_name: Optional[str] = None  # kind=hf: a local datasets directory or name
    batch_size: int = 64  # per process
    num_workers: int = 0
    val_images: int = 256  # images of the validation set used by the in-training evaluation
    streaming: bool = False  # kind=hf: stream rows (data larger than the disk) instead of an Arrow copy
    shuffle_buffer: int = 1000  # streaming: rows in the shuffle buffer (order reseeded each epoch)
    tokenizer_captions: int = 200_000  # streaming: captions read to train a SentencePiece model


TASKS = ("caption", "classify")


@dataclass
class TrainConfig:
    task: str = "caption"  # caption (CoCa/CLIP objective) | classify (a ViT with a classification head)
    # model
    model: Optional[str] = None  # a named architecture in vlm/model/model_configs (None: tiny, or init_from's)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # nested dict, from model.a.b=v keys
    init_from: Optional[str] = None  # checkpoint dir to start from (a CLIP gets a fresh decoder)
    tokenizer_path: Optional[str] = None  # sentencepiece dir; None: train one on the captions
    tokenizer_model_type: str = "bpe"  # SentencePiece model trained at start: bpe | unigram
    pos_embed_init: str = "random"  # random (the model's own init) | sincos (2-D sine-cosine)
    freeze: list[str] = field(default_factory=list)  # towers to freeze: visual | text | decoder
    grad_checkpointing: bool = False
    fsdp: bool = False  # shard weights, gradients, optimizer state (Accelerate FSDP2, full shard; GPUs only)
    # data
    data: DataConfig = field(default_factory=DataConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)  # task=classify: head, layer decay...
    # optimisation
    steps: int = 1000  # optimizer steps
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    grad_accum_steps: int = 1
    clip_grad_norm: Optional[float] = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0
    label_smoothing: float = 0.0
    # bookkeeping
    output_dir: str = "runs/train"
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # accelerator.save_state every N steps (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 500  # validation loss + sample captions every N steps (0: off)
    eval_captions: int = 4
    resume: Optional[str] = None  # a checkpoint dir written by save_state, or "latest"
    stop_after: Optional[int] = None  # exit after this step (a checkpoint is written first)
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU
    export_dtype: str = "float32"  # float32 | float16 (dtype of the final save_pretrained export)
    zero_shot_templates: Optional[list[str]] = None  # stored in the exported config.json's metadata
    debug_nan_at_step: Optional[int] = None  # make the loss NaN at this step (tests the guard)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: must be one of {', '.join(TASKS)}")
        if self.data.kind not in DATA_KINDS:
            raise ValueError(f"data.kind={self.data.kind!r}: must be one of {', '.join(DATA_KINDS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: must be one of {MIXED_PRECISION}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={list(self.betas)}: expected two numbers in [0, 1), e.g. [0.9, 0.98]")
        if self.tokenizer_model_type not in ("bpe", "unigram"):
            raise ValueError(f"tokenizer_model_type={self.tokenizer_model_type!r}: must be bpe or unigram")
        if self.model_overrides and not isinstance(self.model_overrides, dict):
            raise ValueError("model_overrides: expected a mapping of model config keys")
        if self.pos_embed_init not in ("random", "sincos"):
            raise ValueError(f"pos_embed_init={self.pos_embed_init!r}: must be random or sincos")
        bad = [t for t in self.freeze if t not in TOWERS]
        if bad:
            raise ValueError(f"freeze={bad}: towers are {', '.join(TOWERS)}")
        if self.contrastive_weight < 0 or self.caption_weight < 0 or \
                self.contrastive_weight == self.caption_weight == 0:
            raise ValueError("contrastive_weight and caption_weight must be >= 0 and not both 0")
        for name in ("steps", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: must be positive")
        for name in ("warmup_steps", "weight_decay", "label_smoothing", "min_lr_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.label_smoothing >= 1 or self.min_lr_ratio > 1:
            raise ValueError("label_smoothing must be < 1 and min_lr_ratio <= 1")
        if self.data.batch_size < 1:
            raise ValueError(f"data.batch_size={self.data.batch_size}: must be at least 1")
        if self.export_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"export_dtype={self.export_dtype!r}: must be float32, float16 or bfloat16")
        check_applies(self)  # a setting the chosen task would ignore


def load_train_config(path: Optional[str], overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from the defaults) and apply ``key=value`` overrides.

    Raises ``configio.ConfigError`` (a ``ValueError``; ``ConfigFileNotFound``, also a
    ``FileNotFoundError``, for a missing file) with one line naming the file (``PATH: ...``) or the
    override and the key; its ``cli_message()`` names the file as ``--config PATH``, the flag
    the command line read it from. The model config is checked too (``model_setup.model_config``)
    unless ``init_from`` decides the architecture.
    """
    try:
        return _load(path, overrides)
    except configio.ConfigError as e:
        if path and e.cli is None and str(e).startswith(f"{path}: "):
            e.cli = f"--config {e}"
        raise


def _load(path: Optional[str], overrides: list[str]) -> TrainConfig:
    import yaml

    source = str(path) if path else "config"
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise configio.ConfigFileNotFound(f"{path}: no such file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise configio.ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
        if not isinstance(raw, dict):
            raise configio.ConfigError(f"{path}: must be a mapping of keys to values")
    pairs = [(k, raw.pop(k)) for k in [k for k in raw if "." in str(k)]]  # dotted keys in the file
    given = configio.parse_overrides(overrides)
    for (key, value), text in zip(given, overrides):  # a bad override is named as such, not as the file's
        _check_override(key, value, f"override {text}", raw.get("model"))
    pairs += given
    for key, value in pairs:
        if key.startswith("model."):
            configio.set_dotted(raw.setdefault("model_overrides", {}), key[len("model."):], value, source)
        else:
            configio.set_dotted(raw, key, value, source)
    for short, long in SHORT_KEYS.items():  # tokenizer: X is model.tokenizer: X
        if short in raw:
            value = raw.pop(short)
            node = raw.setdefault("model_overrides", {})
            *sections, leaf = long.split(".")
            for part in sections:
                node = node.setdefault(part, {})
            if leaf in node and node[leaf] != value:
                raise configio.ConfigError(f"{source}: {short}={value!r} and model.{long}={node[leaf]!r} "
                                           f"disagree (they are the same setting)")
            node[leaf] = value
    cfg = configio.from_dict(TrainConfig, raw, source)
    try:
        cfg.validate()
    except ValueError as e:  # "steps=0: ..." names one key: an override that set it is to blame
        key = str(e).split("=", 1)[0] if re.match(r"[\w.]+=", str(e)) else None
        blamed = [f"override {text}" for (k, _), text in zip(given, overrides) if k == key]
        raise configio.ConfigError(f"{(blamed or [source])[-1]}: {e}") from None
    if not cfg.init_from:
        model_config(cfg, source)  # the architecture with its overrides: checked here, once
    return cfg


def _check_override(key: str, value: Any, source: str, model: Optional[str]) -> None:
    """An override's key and type on their own, so that its error names the override."""
    if key.split(".")[0] in SHORT_KEYS:
        key = "model." + SHORT_KEYS[key.split(".")[0]]
    if key.startswith("model."):
        tree: dict = {}
        configio.set_dotted(tree, key[len("model."):], value, source)
        model_config(TrainConfig(model=model if isinstance(model, str) else None, model_overrides=tree), source)
        return
    tree = {}
    configio.set_dotted(tree, key, value, source)
    configio.from_dict(TrainConfig, tree, source)


def model_config(cfg: TrainConfig, source: str = "config"):
    """The named architecture (``tiny`` when none is named) with ``model_overrides`` laid over it,
    through the config loader: a bad key or value is one line naming ``source`` and ``model.KEY``."""
    from vlm.model.config import ModelConfig, get_config, list_configs

    name = cfg.model or DEFAULT_MODEL
    try:
        base = get_config(name)
    except KeyError:
        raise configio.ConfigError(f"{source}: model={name!r}: no such architecture "
                                   f"(known: {', '.join(list_configs())})") from None
    raw = configio.merge(base.to_dict(), cfg.model_overrides or {})
    if raw.get("model_type") == "clip":
        raw["decoder"] = None  # model.model_type=clip drops the named CoCa's decoder
    return configio.from_dict(ModelConfig, raw, source, prefix="model.")


def config_to_dict(cfg: TrainConfig) -> dict:
    return configio.to_dict(cfg)
