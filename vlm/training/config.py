"""Training configuration: a ``TrainConfig`` dataclass read from YAML plus ``key=value`` overrides.

The recipe follows CoCa (Yu et al. 2022): a contrastive loss and a captioning
loss on one image encoder, AdamW with decoupled weight decay and a cosine
schedule with linear warmup (Loshchilov & Hutter 2019).

    cfg = load_train_config("configs/shapes_tiny.yaml", ["lr=3e-4", "model.vision.image_size=96"])

Dotted keys reach nested sections (``data.batch_size=32``); ``model.*`` keys
override the named architecture (stored in ``model_overrides``). Values are
parsed as YAML scalars, so ``steps=100``, ``freeze=[visual]`` and
``init_from=null`` work. Run: ``accelerate launch scripts/train.py --config FILE``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vlm.errors import first_line

MIXED_PRECISION = ("no", "bf16", "fp16")
TOWERS = ("visual", "text", "decoder")
DATA_KINDS = ("shapes", "coco", "karpathy", "hf")


@dataclass
class DataConfig:
    kind: str = "shapes"  # shapes | coco | karpathy | hf
    root: str = "data/shapes"  # COCO-format dir (annotations/captions.json + images/) or a COCO root
    train_split: str = "train"  # COCO root: annotations/captions_{split}2017.json, images in {split}2017/
    val_root: Optional[str] = None  # a separate COCO-format dir for validation (shapes)
    val_split: Optional[str] = "val"  # None: no validation
    karpathy_json: Optional[str] = None  # kind=karpathy: path to dataset_coco.json (root = image root)
    hf_name: Optional[str] = None  # kind=hf: a local datasets directory or name
    batch_size: int = 64  # per process
    num_workers: int = 0
    val_images: int = 256  # images of the validation set used by the in-training evaluation
    streaming: bool = False  # kind=hf: stream rows (data larger than the disk) instead of an Arrow copy
    shuffle_buffer: int = 1000  # streaming: rows in the shuffle buffer (order reseeded each epoch)
    tokenizer_captions: int = 200_000  # streaming: captions read to train a SentencePiece model


@dataclass
class TrainConfig:
    # model
    model: str = "tiny"  # a named architecture in vlm/model_configs
    model_overrides: dict = field(default_factory=dict)  # nested dict, from model.a.b=v keys
    init_from: Optional[str] = None  # checkpoint dir to start from (a CLIP gets a fresh decoder)
    image_size: Optional[int] = None  # resize the ViT position embeddings (fine-tune at this size)
    tokenizer: str = "clip_bpe"  # clip_bpe | sentencepiece
    tokenizer_path: Optional[str] = None  # sentencepiece dir; None: train one on the captions
    tokenizer_model_type: str = "bpe"  # SentencePiece model trained at start: bpe | unigram
    pos_embed_init: str = "random"  # random (the model's own init) | sincos (2-D sine-cosine)
    freeze: list = field(default_factory=list)  # towers to freeze: visual | text | decoder
    grad_checkpointing: bool = False
    # data
    data: DataConfig = field(default_factory=DataConfig)
    # optimisation
    steps: int = 1000  # optimizer steps
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
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
    zero_shot_templates: Optional[list] = None  # stored in the exported config.json
    debug_nan_at_step: Optional[int] = None  # make the loss NaN at this step (tests the guard)

    def validate(self) -> None:
        if self.data.kind not in DATA_KINDS:
            raise ValueError(f"data.kind={self.data.kind!r}: must be one of {', '.join(DATA_KINDS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: must be one of {MIXED_PRECISION}")
        if self.tokenizer not in ("clip_bpe", "sentencepiece"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: must be clip_bpe or sentencepiece")
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


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def _build(cls, raw: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        if name == "data" and cls is TrainConfig:
            value = _build(DataConfig, value or {}, f"{where} data")
        elif name == "betas" and value is not None:
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in value)
            if not ok:
                raise ValueError(f"{where}: betas={value!r}: expected two numbers in [0, 1), e.g. [0.9, 0.98]")
            value = tuple(float(v) for v in value)
        else:
            value = _coerce(value, str(known[name].type), f"{where}: {name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """A value of the field's type: YAML reads 3e-4 as a string, so numeric strings become
    numbers; whole floats become ints; anything else of the wrong type is refused."""
    if value is None:
        return value
    base = annotation[len("Optional["):-1] if annotation.startswith("Optional[") else annotation
    if base in ("int", "float") and isinstance(value, str):
        try:
            value = float(value) if base == "float" else int(value)
        except ValueError:
            raise ValueError(f"{where}={value!r}: expected a number") from None
    if base == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r}: expected a whole number")
    elif base == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r}: expected a number")
        value = float(value)
    elif base == "bool" and not isinstance(value, bool):
        raise ValueError(f"{where}={value!r}: expected true or false")
    elif base == "list" and isinstance(value, str):
        value = [value]  # freeze=visual means freeze=[visual]
    elif base == "list" and not isinstance(value, list):
        raise ValueError(f"{where}={value!r}: expected a list")
    elif base == "str" and not isinstance(value, str):
        raise ValueError(f"{where}={value!r}: expected a string")
    return value


def load_train_config(path: Optional[str], overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (or start from the defaults) and apply ``key=value`` overrides."""
    import yaml

    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: not valid YAML ({first_line(e)})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"--config {path}: must be a mapping of keys to values")
    pairs = [(k, raw.pop(k)) for k in [k for k in raw if "." in str(k)]]  # dotted keys in the file
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        pairs.append((key, yaml.safe_load(text) if text else None))
    for key, value in pairs:
        if key.startswith("model."):
            _set_dotted(raw.setdefault("model_overrides", {}), key[len("model."):], value)
        else:
            _set_dotted(raw, key, value)
    cfg = _build(TrainConfig, raw, f"--config {path}" if path else "config")
    cfg.validate()
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["betas"] = list(cfg.betas)
    return d
