"""``vlm classify IMG... --model CLASSIFIER``: the top-k of a supervised classifier's own labels,
printed in the same shape as zero-shot classification (text or ``--json``)."""

from __future__ import annotations

from vlm.cli.common import Reporter, iter_batches


def classify_with_head(pipe, args, labels) -> int:
    if args.template:
        from vlm.errors import UsageError

        raise UsageError("--template: a classifier checkpoint has a trained head, not prompt templates")
    pipe.label_indices(labels)  # labels that are not the checkpoint's: one line before any image is read
    out = Reporter(args.json)
    for batch in iter_batches(args.inputs, args.batch_size):
        good = [it for it in batch if it.error is None]
        results = iter(pipe.classify([it.image for it in good], labels, top_k=args.top_k) if good else [])
        for it in batch:
            if it.error is not None:
                out.error(it, "classify")
                continue
            top = next(results)
            text = f"{it.source}: " + ", ".join(f"{label} ({p:.3f})" for label, p in top)
            out.result({"image": it.source, "top": [{"label": lb, "prob": p} for lb, p in top]}, text)
    return out.exit_code
