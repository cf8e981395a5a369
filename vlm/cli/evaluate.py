"""``vlm evaluate``: captioning, retrieval and zero-shot metrics of a model on a dataset.

    vlm evaluate --model runs/shapes_tiny/model --data data/shapes_test
    vlm evaluate --data coco --split val --json        # COCO root: annotations/captions_val2017.json
    vlm evaluate --data data/coco --split test         # Karpathy root: dataset_coco.json + val2014/
    vlm evaluate --model ckpt/probe --data data/shapes_cls/val --plot confusion.png   # a classifier
    vlm evaluate --data data/shapes_cls/val                                          # zero-shot, class folders

DIR is a COCO-format dataset dir (``annotations/captions.json`` + ``images/``,
as ``vlm data shapes`` writes; it has no splits), a Karpathy root
(``dataset_coco.json``; ``--split`` train, restval, val or test) or a COCO root. Metrics: see
``vlm.evaluation.evaluate`` (CoCa, Yu et al. 2022, reports the same families). A class-per-folder
directory (``vlm data shapes --layout classes``) gives a CLIP or CoCa model's zero-shot
top-1/top-5 and per-class recall, with the model's templates or ``--template``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

from vlm.cli.common import Item, Parser, Reporter, add_model_args, load_pipeline, skipped_status
from vlm.errors import InvalidOption, UsageError
from vlm.runtime.progress import progress_bar


def build_parser() -> Parser:
    from vlm.cli.options import add_dataclass_flags
    from vlm.generation.config import GenerationConfig

    p = Parser(prog="vlm evaluate", description="Captioning (BLEU, METEOR, ROUGE-L, CIDEr, SPICE), "
               "retrieval recall@k and zero-shot accuracy on a COCO-format dataset.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset dir with annotations/captions.json + images/, a Karpathy root "
                   "(dataset_coco.json) or a COCO root")
    p.add_argument("--split", default=None, help="Karpathy split (train, restval, val, test) of a dir with "
                   "dataset_coco.json, or COCO root split: annotations/captions_{split}2017.json")
    add_dataclass_flags(p, GenerationConfig, only=("beams", "max_tokens"), title="captions")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate the first N images only")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="with a classifier or class folders: draw the labelled confusion matrix")
    p.add_argument("--template", action="append", default=None, metavar="T",
                   help="class-folder data: zero-shot prompt template with one {} for the class name; repeat "
                        "for an ensemble (default: the model's)")
    p.add_argument("--no-spice", action="store_true", help="skip SPICE (slow; needs Stanford CoreNLP jars)")
    p.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (its Java start-up loads a paraphrase table: about a minute on a busy CPU)")
    add_model_args(p, precision="fp32")
    p.set_defaults(batch_size=64)
    return p


def _clean(obj):
    """JSON-safe: NaN -> None."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from vlm.cli.evaluate_classifier import is_classifier_model, main_classifier

    if is_classifier_model(args.model):  # top-1/top-5/per-class recall on labelled images
        return main_classifier(args)
    data = Path(args.data)
    if not data.is_dir():
        raise UsageError(f"--data {args.data}: no such directory")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images {args.max_images}: must be at least 1")
    from vlm.cli.options import dataclass_from_flags
    from vlm.generation.config import GenerationConfig

    dataclass_from_flags(GenerationConfig, args).validate()
    from vlm.evaluation.evaluate import evaluate_model, format_report, load_classes
    from vlm.evaluation.shapes_check import shapes_checks
    from vlm.data.layout import SplitError, open_caption_dir

    try:  # the data dir, its split and classes.json are checked before the model loads
        n_images = len(open_caption_dir(data, args.split, load_images=False).image_ids())
    except SplitError as e:
        raise UsageError(f"--split {args.split}: {e}" if args.split else f"--data {args.data}: {e}") from None
    except (FileNotFoundError, ValueError) as e:
        folders = _class_folders(data)
        if folders is not None and args.split is None:  # class-per-folder: zero-shot classification
            from vlm.cli.evaluate_classifier import main_zero_shot

            return main_zero_shot(args, folders)
        raise UsageError(f"--data {args.data}: {e}{_split_hint(data, args.split)}") from None
    if args.template is not None:
        raise UsageError("--template: goes with class-folder data (a COCO-format dataset's zero-shot "
                         "templates are those of its classes.json)")
    try:
        load_classes(data)
    except ValueError as e:
        raise UsageError(str(e)) from None  # names classes.json
    checks = shapes_checks(data)  # a `vlm data shapes` dir: its captions name known colors and shapes
    pipe = load_pipeline(args)
    reporter = Reporter(args.json, "evaluate", json_errors=False)  # an unreadable image: one line, as in caption
    bar = progress_bar("vlm evaluate", total=min(n_images, args.max_images or n_images), unit="img")
    try:
        report = evaluate_model(pipe, data, args.split, batch_size=args.batch_size, beams=args.beams,
                                max_tokens=args.max_tokens, max_images=args.max_images, spice=not args.no_spice,
                                meteor=not args.no_meteor, progress=bar.update if bar else None,
                                checks=checks,
                                on_skip=lambda path, why: reporter.error(Item(path, error=f"{path}: {why}")))
    except InvalidOption:  # an option (beams x batch too large): it names itself
        raise
    except ValueError as e:
        raise UsageError(f"--data {args.data}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    report = {"model": pipe.name, "data": str(data), **report}
    print(json.dumps(_clean(report)) if args.json else format_report(report, checks))
    return skipped_status(args.data, report.get("skipped_images", 0), report.get("num_images", 0))


def _class_folders(data: Path):
    """The ``LabelledImages`` of a class-per-folder directory, or None when ``data`` is not one."""
    from vlm.classify.data import open_labelled

    if (data / "annotations").is_dir() or (data / "dataset_coco.json").exists():
        return None  # a caption dataset with a problem: its own error says which
    try:
        return open_labelled(data)
    except ValueError:
        return None


def _split_hint(data: Path, split: Optional[str]) -> str:
    """For a COCO root (annotations/captions_{split}2017.json) the splits it has, as a hint."""
    found = sorted(p.name[len("captions_"):-len("2017.json")]
                   for p in (data / "annotations").glob("captions_*2017.json"))
    if not found:
        return ""
    if split is None:
        return f"; it is a COCO root with the splits {', '.join(found)}: pass --split {found[0]}"
    return f"; it is a COCO root with the splits {', '.join(found)}, not {split!r}"
