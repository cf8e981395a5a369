"""``vlm probe --model M --train DATA --val DATA [--test DATA] [--out CKPT] [--json]``: a linear
probe (CLIP's protocol, ``vlm.classify.probe``) that writes a classifier checkpoint.

DATA is a class-per-folder directory, a ``path,label`` CSV or ``hf:DATASET[@SPLIT]``. The
backbone is frozen; its features are embedded once and cached (``--cache``); the logistic
regression's weight decay is swept on --val; top-1/top-5 are reported on --val (and --test).
Unreadable images are skipped and counted. Exit status 0, or 2 for bad data or a bad model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError

DEFAULT_CACHE = Path.home() / ".cache" / "vlm" / "features"


def build_parser() -> Parser:
    p = Parser(prog="vlm probe", description="Linear probe: logistic regression on frozen ViT features.")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="backbone (default: the shipped model)")
    p.add_argument("--train", required=True, metavar="DATA", help="class-per-folder dir, path,label CSV or hf:NAME")
    p.add_argument("--val", required=True, metavar="DATA", help="validation data: the weight decay is chosen on it")
    p.add_argument("--test", default=None, metavar="DATA", help="held-out data, reported only")
    p.add_argument("--out", default=None, metavar="DIR", help="write the classifier checkpoint here (new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--feature", choices=("embedding", "pooled"), default=None,
                   help="head input: the contrastive embedding (default for CLIP/CoCa) or the pooled token")
    p.add_argument("--weight-decay", type=float, action="append", default=None, metavar="WD",
                   help="weight decays to sweep (repeat; default 1e-6 ... 1)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), metavar="DIR", help="feature cache ('' to disable)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return p


def _open(spec: str, flag: str):
    from vlm.classify.data import open_labelled

    try:
        return open_labelled(spec)
    except ValueError as e:
        raise UsageError(f"{flag} {e}") from None


def _embed(model, pre, data, args, cache, name: str, split: str):
    """``embed`` with a progress bar on a terminal (none when the features come from the cache)."""
    from vlm.classify.probe import embed
    from vlm.runtime.progress import progress_bar

    bar = progress_bar(f"vlm probe ({split})", total=len(data), unit="img")
    try:
        return embed(model, pre, data, args.batch_size, cache, name, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    out = Path(args.out) if args.out else None
    if out is not None:
        from vlm.export.common import check_out_dir

        check_out_dir(out, args.force)  # before any embedding work; replaced atomically at the end
    train = _open(args.train, "--train")
    val, test = _open(args.val, "--val"), _open(args.test, "--test") if args.test else None
    try:
        val = val.remap(train.classes, f"--train {args.train}")
        test = test.remap(train.classes, f"--train {args.train}") if test is not None else None
    except ValueError as e:
        raise UsageError(f"--val/--test {e}") from None

    from vlm.api import resolve_device
    from vlm.classify.backbone import classifier_for
    from vlm.classify.checkpoint import save_classifier
    from vlm.classify.metrics import top_k_accuracy
    from vlm.classify.probe import WEIGHT_DECAYS, linear_probe

    model, pre, _ = classifier_for(args.model, train.classes, args.feature, device=str(resolve_device(args.device)))
    cache = args.cache or None
    name = str(args.model or "default")
    feats = {k: _embed(model, pre, d, args, cache, name, k) for k, d in (("train", train), ("val", val),
                                                                        ("test", test)) if d is not None}
    for k, f in feats.items():
        if len(f.y) == 0:
            raise UsageError(f"--{k}: no readable images")
    result = linear_probe(feats["train"], feats["val"], len(train.classes), args.weight_decay or WEIGHT_DECAYS)
    report = {"model": name, "feature": model.cfg.feature, "feature_dim": model.cfg.feature_dim,
              "classes": len(train.classes), "weight_decay": result.weight_decay, "sweep": result.sweep}
    for k, f in feats.items():
        logits = f.x @ result.weight.t() + result.bias
        report[k] = {"images": len(f.y), "skipped": f.skipped, "cached": f.cached,
                     "top1": top_k_accuracy(logits, f.y, 1), "top5": top_k_accuracy(logits, f.y, 5)}
    if out is not None:
        from vlm.export.common import atomic_dir

        model.set_head(result.weight, result.bias)
        with atomic_dir(out, args.force) as tmp:  # a reader never sees half a checkpoint
            save_classifier(model.cpu(), tmp, extra={"trained_by": f"vlm probe --model {name} --train {args.train} "
                                                                   f"(weight decay {result.weight_decay:g})"})
        report["out"] = str(out)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"probe: {name}, feature {report['feature']} ({report['feature_dim']}-d), {report['classes']} classes")
    for k in ("train", "val", "test"):
        if k not in report:
            continue
        r = report[k]
        line = f"{k}: {r['images']} images ({r['skipped']} unreadable skipped{', features cached' if r['cached'] else ''})"
        if k != "train":
            line += f", top-1 {r['top1']:.4f}, top-5 {r['top5']:.4f}"
        print(line)
    print("weight decay sweep (val top-1): " + ", ".join(f"{s['weight_decay']:g} {s['val_top1']:.4f}" for s in result.sweep)
          + f"; chosen {result.weight_decay:g}")
    if out is not None:
        print(f"wrote {out} (vlm classify IMG --model {out})")
    sys.stdout.flush()
    return 0
