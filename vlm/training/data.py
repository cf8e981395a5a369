"""Data for training: the tokenizer, the datasets and the DataLoaders a config asks for.

Datasets come from ``vlm.data`` (COCO captions via pycocotools, Karpathy splits,
Hugging Face ``datasets``); shapes data made by ``vlm data shapes`` is COCO
format, so ``kind: shapes`` and ``kind: coco`` read it the same way. Missing or
corrupt images become ``None`` items that ``vlm.data.collate`` drops and counts.

    tokenizer = build_tokenizer(cfg, model_cfg, out_dir, is_main)
    train_loader, val_loader, val_set = build_loaders(cfg, model_cfg, tokenizer)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from torch.utils.data import DataLoader


def open_caption_dir(root, split: Optional[str] = None, transform=None, tokenize=None, load_images: bool = True):
    """A COCO-format dataset dir (annotations/captions.json + images/) or a COCO root
    (annotations/captions_{split}2017.json + {split}2017/) as a ``CocoCaptions``."""
    from vlm.data.coco import CocoCaptions

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset directory")
    single = root / "annotations" / "captions.json"
    if single.is_file():
        return CocoCaptions(root / "images", single, transform, tokenize, load_images)
    if split:
        official = root / "annotations" / f"captions_{split}2017.json"
        if official.is_file():
            return CocoCaptions(root / f"{split}2017", official, transform, tokenize, load_images)
    want = "annotations/captions.json" + (f" or annotations/captions_{split}2017.json" if split else "")
    raise FileNotFoundError(f"{root}: not a COCO-format dataset (expected {want})")


def train_captions(cfg) -> list[str]:
    """Every training caption (for training a SentencePiece model), no image decoding."""
    ds = _dataset(cfg, "train", None, None, load_images=False)
    if hasattr(ds, "references"):
        return [c for caps in ds.references().values() for c in caps]
    return [ds[i]["caption"] for i in range(len(ds)) if ds[i] is not None]


def build_tokenizer(cfg, model_cfg, out_dir: Path, is_main: bool, wait=lambda: None):
    """CLIP BPE, a given SentencePiece dir, or one trained on the training captions
    (by the main process, into ``out_dir/tokenizer``; the others wait and load it)."""
    from vlm.tokenizers import CLIPBPETokenizer, load_tokenizer, train_sentencepiece

    ctx = model_cfg.text.context_length
    if cfg.tokenizer == "clip_bpe":
        tok = CLIPBPETokenizer(context_length=ctx)
    elif cfg.tokenizer_path:
        tok = load_tokenizer(cfg.tokenizer_path)
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
    from vlm.images import PreprocessConfig, preprocess

    return functools.partial(preprocess, cfg=PreprocessConfig.for_model(model_cfg))


def _dataset(cfg, which: str, transform, tokenize, load_images: bool = True):
    d = cfg.data
    split = d.train_split if which == "train" else d.val_split
    if d.kind in ("shapes", "coco"):
        root = d.val_root if which == "val" and d.val_root else d.root
        return open_caption_dir(root, split, transform, tokenize, load_images)
    if d.kind == "karpathy":
        from vlm.data.coco import KarpathySplit

        if not d.karpathy_json:
            raise ValueError("data.kind=karpathy needs data.karpathy_json (dataset_coco.json)")
        return KarpathySplit(d.karpathy_json, d.root, split, transform=transform, tokenize=tokenize,
                             load_images=load_images)
    from vlm.data.hf import load_caption_dataset

    return load_caption_dataset(d.hf_name or d.root, split=split, transform=transform, tokenize=tokenize)


def has_val(cfg) -> bool:
    return bool(cfg.data.val_split or cfg.data.val_root)


def build_loaders(cfg, model_cfg, tokenizer):
    """(train_loader, val_loader or None, val dataset or None): plain DataLoaders for
    ``accelerator.prepare`` (its seedable sampler reshuffles each epoch from the seed)."""
    from vlm.data.collate import collate

    tf = image_transform(model_cfg)
    tokenize = functools.partial(tokenizer, context_length=model_cfg.text.context_length)
    train = _dataset(cfg, "train", tf, tokenize)
    train_loader = DataLoader(train, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate, num_workers=cfg.data.num_workers)
    if len(train_loader) == 0:
        raise ValueError(f"data.root={cfg.data.root}: {len(train)} training pairs, fewer than one batch "
                         f"of {cfg.data.batch_size}")
    val = val_loader = None
    if has_val(cfg):
        val = _dataset(cfg, "val", tf, tokenize)
        if hasattr(val, "images"):
            import torch

            ids = min(len(val.images()), cfg.data.val_images)
            val = torch.utils.data.Subset(val.images(), range(ids))  # one caption per image
        val_loader = DataLoader(val, batch_size=cfg.data.batch_size, shuffle=False, collate_fn=collate,
                                num_workers=cfg.data.num_workers)
    return train_loader, val_loader, val
