"""Data for training: the tokenizer, the datasets and the DataLoaders a config asks for.

Datasets come from ``vlm.data`` (COCO captions via pycocotools, Karpathy splits,
Hugging Face ``datasets``); every kind is a ``vlm.data.dataset.CaptionDataset``, so
nothing past opening one depends on the kind. ``kind: shapes`` reads a dir that
``vlm data shapes`` wrote (COCO format, read as ``kind: coco`` reads it) and refuses
any other. Missing or corrupt images become ``None`` items that ``vlm.data.collate``
drops and counts.

    tokenizer = build_tokenizer(cfg, model_cfg, out_dir, is_main)
    train_loader, val_loader, val_set = build_loaders(cfg, model_cfg, tokenizer)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader, IterableDataset

from vlm.data.dataset import CaptionDataset
from vlm.data.layout import SplitError, is_single_layout, open_caption_dir, open_karpathy
from vlm.data.shapes_dir import is_shapes_dir


def train_captions(cfg) -> list[str]:
    """Every training caption (for training a SentencePiece model), no image decoding; of a stream,
    the first ``data.tokenizer_captions`` rows stand for the whole."""
    ds = _dataset(cfg, "train", None, None, load_images=False)
    return ds.captions(limit=cfg.data.tokenizer_captions if ds.is_stream else None)


def training_caption_words(cfg) -> Optional[list[str]]:
    """The words a caption decoder trained by this run knows (``CheckpointMeta.caption_words``,
    ``vlm.generation.lexicon``): those of every training caption, with the list of an ``init_from`` CoCa.

    None, so decoding is not held to a list, where the words are not all known: a stream
    (only its first rows can be read up front), or a CoCa ``init_from`` without a list
    (a converted open_clip model, trained on captions nobody listed)."""
    from vlm.io.checkpoint import read_config
    from vlm.generation.lexicon import caption_words

    prior: list[str] = []
    if cfg.init_from:
        ckpt_cfg, meta = read_config(cfg.init_from)
        if ckpt_cfg.decoder is not None:  # a CLIP gets a fresh decoder: only this run's words
            if meta.caption_words is None:
                return None
            prior = list(meta.caption_words)
    ds = _dataset(cfg, "train", None, None, load_images=False)
    if ds.is_stream:
        return None
    return caption_words(prior + ds.captions())


def build_tokenizer(cfg, model_cfg, out_dir: Path, is_main: bool, wait=lambda: None):
    """The kind ``model_cfg.tokenizer`` names: CLIP BPE, a given SentencePiece dir, or one trained
    on the training captions (by the main process, into ``out_dir/tokenizer``; the others wait)."""
    from vlm.tokenizers import CLIPBPETokenizer, load_tokenizer, train_sentencepiece

    ctx = model_cfg.text.context_length
    if model_cfg.tokenizer == "clip_bpe":
        tok = CLIPBPETokenizer(context_length=ctx)
    elif cfg.tokenizer_path:
        tok = load_tokenizer(cfg.tokenizer_path)
        if tok.type_name != model_cfg.tokenizer:
            raise ValueError(f"tokenizer_path={cfg.tokenizer_path}: a {tok.type_name} tokenizer, but the model "
                             f"config says tokenizer={model_cfg.tokenizer}")
    else:
        tok_dir = out_dir / "tokenizer"
        if is_main and not (tok_dir / "tokenizer_config.json").is_file():
            train_sentencepiece(train_captions(cfg), tok_dir, vocab_size=model_cfg.text.vocab_size,
                                model_type=cfg.tokenizer_model_type, context_length=ctx, num_threads=1)
        wait()
        tok = load_tokenizer(tok_dir)
    tok.context_length = ctx
    check_vocab(tok, model_cfg)
    return tok


def check_vocab(tok, model_cfg) -> None:
    sizes = [model_cfg.text.vocab_size] + ([model_cfg.decoder.vocab_size] if model_cfg.decoder else [])
    if tok.vocab_size > min(sizes):
        raise ValueError(f"tokenizer vocabulary ({tok.vocab_size}) is larger than the model's "
                         f"vocab_size ({min(sizes)}): set model.text.vocab_size/model.decoder.vocab_size")


def image_transform(model_cfg):
    """PIL image -> normalised (3, S, S) tensor at the model's resolution."""
    from vlm.io.images import PreprocessConfig, preprocess

    return functools.partial(preprocess, cfg=PreprocessConfig.for_model(model_cfg))


def _dataset(cfg, which: str, transform, tokenize, load_images: bool = True) -> CaptionDataset:
    d = cfg.data
    split = d.train_split if which == "train" else d.val_split
    try:
        if d.kind in ("shapes", "coco"):
            root = d.val_root if which == "val" and d.val_root else d.root
            if d.kind == "shapes" and Path(root).is_dir() and not is_shapes_dir(root):
                key = "val_root" if which == "val" and d.val_root else "root"
                raise ValueError(f"data.{key}={root}: not a dataset `vlm data shapes` wrote (data.kind=shapes); "
                                 f"for other COCO-format data set data.kind=coco")
            if is_single_layout(root):
                split = None  # the whole dir is the set; its split settings do not apply
            return open_caption_dir(root, split, transform, tokenize, load_images)
        if d.kind == "karpathy":  # the reader of a Karpathy root given as kind=coco, with the file named
            json_file = Path(d.karpathy_json or Path(d.root) / "dataset_coco.json")
            if not d.karpathy_json and not json_file.is_file():
                raise FileNotFoundError(f"data.root={d.root}: no dataset_coco.json (set data.karpathy_json)")
            return open_karpathy(json_file, d.root, split, transform, tokenize, load_images)
    except SplitError as e:
        raise ValueError(f"data.{which}_split={split}: {e}") from None
    from vlm.data.hf import UnknownSplitError, load_caption_dataset

    spec = d.hf_name or d.root
    load = functools.partial(load_caption_dataset, spec, streaming=d.streaming, transform=transform,
                             tokenize=tokenize)
    try:
        return load(split=split)
    except UnknownSplitError as e:
        if which == "val" and split == "val" and "validation" in e.available:  # HF's name for a val/ folder
            return load(split="validation")
        raise ValueError(f"data.{which}_split={split}: {e}") from None


def check_data(cfg) -> None:
    """Open the local caption data a config names (kinds shapes, coco, karpathy) without decoding
    an image: the errors ``build_datasets`` would raise, before anything is built or launched.
    Hugging Face data (``kind: hf``) is checked when training opens it."""
    if cfg.data.kind == "hf":
        return
    _dataset(cfg, "train", None, None, load_images=False)
    if has_val(cfg):
        _dataset(cfg, "val", None, None, load_images=False)


def _val_on_training_dir(cfg) -> bool:
    """A val_split without val_root on a single-layout dir: that dir is the training set."""
    d = cfg.data
    return bool(d.val_split) and not d.val_root and d.kind in ("shapes", "coco") and is_single_layout(d.root)


def has_val(cfg) -> bool:
    return bool(cfg.data.val_split or cfg.data.val_root) and not _val_on_training_dir(cfg)


def build_datasets(cfg, model_cfg, tokenizer):
    """(train set, validation set or None) for the captioning task. A stream's training set
    is shuffled through a buffer reseeded by ``set_epoch``; the validation set is at most
    ``data.val_images`` images (one caption each) or rows of a stream.

    A single-layout ``data.root`` without ``data.val_root`` has no validation set
    (a warning on the ``vlm.training`` logger says so), never its own training images."""
    tf = image_transform(model_cfg)
    tokenize = functools.partial(tokenizer, context_length=model_cfg.text.context_length)
    train = _dataset(cfg, "train", tf, tokenize)
    if train.is_stream:  # a shuffle buffer, reseeded by set_epoch (map-style data: the sampler shuffles)
        train = train.shuffle(seed=cfg.seed, buffer_size=cfg.data.shuffle_buffer)
    val = None
    if _val_on_training_dir(cfg):
        logging.getLogger("vlm.training").warning(
            f"data.root={cfg.data.root} has one annotations/captions.json (no splits): no validation "
            f"(set data.val_root to a validation dir, or data.val_split=null to silence this note)")
    if has_val(cfg):  # one caption per image; of a stream or an HF table, its first rows
        val = _dataset(cfg, "val", tf, tokenize).images(limit=cfg.data.val_images)
    return train, val


def make_loaders(cfg, train, val, collate):
    """(train_loader, val_loader or None): plain DataLoaders for ``accelerator.prepare`` (its
    seedable sampler reshuffles each epoch from the seed); the training loader drops the last
    partial batch. Any task's datasets: ``collate`` batches its items."""
    stream = isinstance(train, IterableDataset)
    train_loader = DataLoader(train, batch_size=cfg.data.batch_size, shuffle=not stream, drop_last=True,
                              collate_fn=collate, num_workers=cfg.data.num_workers)
    if not stream and len(train_loader) == 0:
        raise ValueError(f"data.root={cfg.data.root}: {len(train)} training items, fewer than one batch "
                         f"of {cfg.data.batch_size}")
    val_loader = None if val is None else DataLoader(val, batch_size=cfg.data.batch_size, shuffle=False,
                                                     collate_fn=collate, num_workers=cfg.data.num_workers)
    return train_loader, val_loader


def build_loaders(cfg, model_cfg, tokenizer):
    """(train_loader, val_loader or None, val dataset or None) of the captioning task."""
    from vlm.data.collate import collate

    train, val = build_datasets(cfg, model_cfg, tokenizer)
    return (*make_loaders(cfg, train, val, collate), val)
