"""``vlm evaluate --model CLASSIFIER --data DATA [--plot FILE.png] [--json]``: top-1, top-5 and
per-class recall of a classifier on labelled images (class-per-folder, path,label CSV or
hf:DATASET); the data's classes must be labels of the checkpoint. ``--plot`` draws the
labelled confusion matrix.

A CLIP or CoCa model on a class-per-folder directory (``vlm data shapes --layout classes``) is
evaluated zero-shot the same way: its head is the prompt-ensemble embeddings of the folder names
(the model's templates, or ``--template``), CLIP's zero-shot classifier (``vlm.classify.zeroshot``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vlm.errors import UsageError


def is_classifier_model(name) -> bool:
    from vlm.classify.checkpoint import is_classifier_dir

    return bool(name) and (str(name).startswith("timm:") or is_classifier_dir(name))


def main_classifier(args) -> int:
    from vlm.classify.data import open_labelled

    try:
        data = open_labelled(args.data, min_classes=1)
    except ValueError as e:
        raise UsageError(f"--data {e}") from None
    if args.max_images is not None:
        if args.max_images < 1:
            raise UsageError(f"--max-images {args.max_images}: must be at least 1")
        keep = slice(0, args.max_images)
        data.sources, data.targets = data.sources[keep], data.targets[keep]
    plot = _plot_path(args)
    from vlm.cli.common import load_pipeline

    pipe = load_pipeline(args)
    try:
        data = data.remap(pipe.labels, f"the classifier {pipe.name}")
    except ValueError as e:
        raise UsageError(f"--data {e}") from None
    return _evaluate(args, pipe.name, pipe.model, pipe.preprocess_cfg, data, plot, {})


def main_zero_shot(args, data) -> int:
    """A CLIP or CoCa model on labelled images ``data`` (a ``LabelledImages``): zero-shot top-1/top-5."""
    from vlm.classify.model import classifier_from_backbone
    from vlm.classify.prompts import check_templates
    from vlm.classify.zeroshot import zero_shot_head
    from vlm.cli.common import load_pipeline

    templates = check_templates(args.template) if args.template is not None else None
    plot = _plot_path(args)
    if args.max_images is not None:
        data.sources, data.targets = data.sources[:args.max_images], data.targets[:args.max_images]
    pipe = load_pipeline(args)
    model = classifier_from_backbone(pipe.model, data.classes, "embedding").to(pipe.device)
    zero_shot_head(model, pipe, templates=templates)  # warns once of class or template words the model never learned
    used = list(templates if templates is not None else pipe.templates)
    return _evaluate(args, pipe.name, model, pipe.preprocess_cfg, data, plot, {"zero_shot": True, "templates": used})


def _plot_path(args):
    plot = getattr(args, "plot", None)
    if plot and Path(plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--plot {plot}: must end in .png, .pdf or .svg")
    return plot


def _evaluate(args, name: str, model, preprocess, data, plot, extra: dict) -> int:
    from vlm.classify.evaluate import confusion_plot, evaluate_classifier
    from vlm.cli.common import Item, Reporter, skipped_status
    from vlm.runtime.progress import progress_bar

    reporter = Reporter(args.json, "evaluate", json_errors=False)  # an unreadable image: one line, as in caption
    bar = progress_bar("vlm evaluate", total=len(data), unit="img")
    try:
        report, conf = evaluate_classifier(
            model, preprocess, data, args.batch_size, progress=bar.update if bar is not None else None,
            on_skip=lambda path, why: reporter.error(Item(path, error=f"{path}: {why}")))
    finally:
        if bar is not None:
            bar.close()
    if report["images"] == 0:
        raise UsageError(f"--data {args.data}: no readable images ({report['skipped']} skipped)")
    if plot:
        present = [lb for lb in model.labels if lb in report["per_class_recall"]]
        confusion_plot(conf, present, plot)
    report = {**extra, **report}
    out = {"model": name, "data": str(args.data), "classification": report}
    if args.json:
        print(json.dumps(out, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        what = "zero-shot classification" if report.get("zero_shot") else "classification"
        print(f"{what} ({report['images']} images, {report['classes']} classes, "
              f"{report['skipped']} unreadable skipped): top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f}")
        for label, r in report["per_class_recall"].items():
            print(f"  recall {label}: {r:.4f}")
        if plot:
            print(f"confusion matrix: {plot}")
    return skipped_status(args.data, report["skipped"], report["images"])
