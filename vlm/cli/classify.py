"""``vlm classify IMAGE_OR_DIR... --labels "cat,dog"``: zero-shot classification.

Each label is embedded through every prompt template; the label embedding is the
mean of the normalised template embeddings (a prompt ensemble, as in CLIP).
With ``--model CLASSIFIER`` (a classifier checkpoint, ``timm:NAME``, a
ViTForImageClassification) no labels are needed: the model's own top-k are
printed (``--labels`` then restricts the choice to some of its labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vlm.cli.common import Parser, Reporter, add_model_args, iter_batches, load_pipeline, with_ood
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm classify", description="Zero-shot classify images with text labels. Labels must be "
               "distinct (a repeated label would split its probability) and not blank.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    labels = p.add_mutually_exclusive_group(required=False)  # a classifier checkpoint has its own
    labels.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,car" (not needed with a classifier)')
    labels.add_argument("--labels-file", metavar="F",
                        help="a UTF-8 text file with one label per line (blank lines are skipped)")
    p.add_argument("--template", action="append", default=None, metavar="T",
                   help='prompt template with one {} for the label ({{ }} for literal braces); repeat for an '
                        'ensemble (default: the model\'s)')
    p.add_argument("--top-k", type=int, default=5, help="labels to show per image")
    add_model_args(p, precision="fp32")
    return p


def read_labels(args) -> list[str]:
    """The labels of ``--labels`` or ``--labels-file``, checked by the API's one rule (``vlm.classify.prompts``)."""
    from vlm.classify.prompts import check_labels

    if args.labels_file is not None:
        path = Path(args.labels_file)
        source = f"--labels-file {path}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{source}: is a directory, not a text file") from None
        except OSError as e:
            raise UsageError(f"{source}: unreadable ({e.strerror or type(e).__name__})") from None
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first label
        except UnicodeDecodeError as e:
            raise UsageError(f"{source}: not a UTF-8 text file (byte 0x{data[e.start]:02x} at offset "
                             f"{e.start})") from None
        if "\x00" in text:
            raise UsageError(f"{source}: not a text file (it contains NUL bytes)")
        labels = [line.strip() for line in text.splitlines()]
        labels = [label for label in labels if label]  # blank lines separate, as documented in --help
    else:
        source = "--labels"
        labels = args.labels.lstrip("\ufeff").split(",")
    return check_labels(labels, what=source)


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.classify.prompts import check_templates

    args = build_parser().parse_args(argv)
    labels = read_labels(args) if args.labels is not None or args.labels_file is not None else None
    if args.template is not None:
        check_templates(args.template)  # a bad template fails before the model loads
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    pipe = load_pipeline(args)
    if getattr(pipe, "is_classifier", False):
        from vlm.cli.classify_head import classify_with_head

        return classify_with_head(pipe, args, labels)
    if labels is None:
        raise UsageError("--labels or --labels-file is required: a zero-shot model has no labels of its own "
                         "(only a classifier checkpoint does)")
    label_embeds = pipe.label_embeddings(labels, args.template)  # warns once of words the model never learned
    words = pipe.label_words(labels, args.template)
    unseen = None if words is None else dict(zip(labels, words.unseen))
    out = Reporter(args.json, "classify")
    with pipe.ood_run():  # one out-of-distribution notice for the whole run, counting every image
        for batch in iter_batches(args.inputs, args.batch_size):
            good = [it for it in batch if it.error is None]
            results = iter(pipe.classify([it.image for it in good], labels, top_k=args.top_k,
                                         label_embeds=label_embeds) if good else [])
            for it in batch:
                if it.error is not None:
                    out.error(it)
                    continue
                top = next(results)
                text = f"{it.source}: " + ", ".join(f"{label} ({p:.3f})" for label, p in top)
                entries = [{"label": l, "prob": p, **({} if unseen is None else {"unseen": unseen[l]})} for l, p in top]
                out.result(with_ood({"image": it.source, "top": entries}, top), text)
    return out.exit_code
