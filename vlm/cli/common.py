"""Pieces shared by the subcommands: the argument parser, model options, image
batches that survive bad inputs, and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from vlm.errors import UsageError
from vlm.runtime.progress import progress_bar


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``vlm caption: error: ... (see --help)``."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


PRECISIONS = ("fp32", "bf16", "int8")  # vlm.runtime.precision.PRECISIONS (a test keeps them equal; no torch here)


def add_precision_arg(p: argparse.ArgumentParser, default: str = "fp32") -> None:
    p.add_argument("--precision", default=default, choices=PRECISIONS,
                   help=f"fp32, bf16 (weights and caches in bfloat16; fast on CPUs with AVX512-BF16 or AMX and "
                        f"on GPUs) or int8 (dynamic int8 linear layers; CPU); default {default}. How close they "
                        f"stay to fp32 on your images: vlm check-precision (docs/precision.md)")


def add_model_args(p: argparse.ArgumentParser, image_size: bool = True, batch_size: bool = True,
                   precision: Optional[str] = None) -> None:
    """--model, --pretrained, --device, --image-size, --batch-size, (``precision``) --precision and
    --json; a command that runs one image (explain) has no --batch-size and loads its model for
    batches of one. ``precision``: the --precision default, None for no such flag."""
    from vlm.runtime.limits import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, MAX_IMAGE_SIZE

    p.add_argument("--model", default=None, metavar="NAME_OR_DIR",
                   help="shipped model name, checkpoint directory, open_clip:ARCH or hf:NAME (default: the shipped default model)")
    p.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE",
                   help="with --model open_clip:ARCH: the pretrained tag or checkpoint file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    if image_size:
        p.add_argument("--image-size", type=int, default=None, metavar="N",
                       help=f"run at this resolution; position embeddings are resized bicubically (a multiple "
                            f"of the patch size, at most {MAX_IMAGE_SIZE}; a batch at this size must fit in "
                            f"memory, checked before any image is read)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                       help=f"images per forward pass (1..{MAX_BATCH_SIZE}, and it must fit in memory; "
                            f"default {DEFAULT_BATCH_SIZE})")
    if precision is not None:
        add_precision_arg(p, precision)
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def load_pipeline(args):
    """``vlm.load`` with the model flags; sizes that cannot fit in memory are refused here."""
    import vlm.api

    from vlm.runtime.limits import check_batch_size

    batch_size = getattr(args, "batch_size", 1)  # a command without --batch-size runs one image at a time
    check_batch_size(batch_size)  # before a model is read
    return vlm.api.load(args.model, device=args.device, image_size=getattr(args, "image_size", None),
                    pretrained=getattr(args, "pretrained", None), batch_size=batch_size,
                    precision=getattr(args, "precision", "fp32"))


@dataclass
class Item:
    source: str  # the path as the user gave it (or found in a directory)
    image: object = None  # the loaded PIL image
    error: Optional[str] = None  # one-line reason it failed


def iter_batches(inputs: Sequence[str], batch_size: int, progress: bool = True) -> Iterator[list[Item]]:
    """Batches of items in input order; a bad input becomes an item with an error."""
    from vlm.io.images import ImageLoadError, collect_images, load_image

    entries: list = []  # a path to load, or the ImageLoadError of an input that expanded to nothing
    for inp in inputs:
        paths, errors = collect_images([inp])
        entries += paths + errors
    n_paths = sum(not isinstance(e, ImageLoadError) for e in entries)
    bar = progress_bar(total=n_paths, unit="img") if progress and n_paths > 5 else None
    for start in range(0, len(entries), batch_size):
        batch = []
        for entry in entries[start : start + batch_size]:
            if isinstance(entry, ImageLoadError):
                batch.append(Item(source=entry.source, error=str(entry)))
                continue
            try:
                batch.append(Item(source=str(entry), image=load_image(entry)))
            except ImageLoadError as e:
                batch.append(Item(source=str(entry), error=str(e)))
        yield batch
        if bar is not None:
            bar.update(sum(it.error is None for it in batch))
    if bar is not None:
        bar.close()


def with_ood(obj: dict, result) -> dict:
    """``obj`` with ``"ood": true|false`` when the result carries the flag (models with an
    out-of-distribution profile, vlm.trust.ood); unchanged otherwise."""
    far = getattr(result, "ood", None)
    if far is not None:
        obj["ood"] = bool(far)
    return obj


class Reporter:
    """Prints results and errors; counts failures for the exit status.

    ``json_errors``: with ``--json``, a failed input also gets an ``{"image", "error"}`` line on
    stdout (caption, classify); off for commands whose JSON output is one object (similarity)."""

    def __init__(self, as_json: bool, command: Optional[str] = None, json_errors: bool = True):
        self.as_json = as_json
        self.command = command
        self.json_errors = json_errors
        self.failed = 0

    def error(self, item: Item, command: Optional[str] = None) -> None:
        self.failed += 1
        print(f"vlm {command or self.command}: error: {item.error}", file=sys.stderr)
        if self.as_json and self.json_errors:
            print(json.dumps({"image": item.source, "error": item.error}), flush=True)

    def result(self, obj: dict, text: str) -> None:
        print(json.dumps(obj) if self.as_json else text, flush=True)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def skipped_status(data: str, skipped: int, kept: int) -> int:
    """``vlm evaluate``'s exit status once the metrics are printed: like caption, 1 when some images could not be
    read (each already named on its own line), with a line saying what the metrics cover."""
    if not skipped:
        return 0
    print(f"vlm evaluate: error: --data {data}: {skipped} of {skipped + kept} images could not be read; "
          f"the metrics cover the other {kept}", file=sys.stderr)
    return 1
