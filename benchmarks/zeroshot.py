"""Zero-shot classifier build at scale: vlm's ``class_embeddings`` vs open_clip's
``build_zero_shot_classifier`` with the same weights (open_clip ViT-B-32, random init, converted
to vlm), ImageNet class names x the first 18 OpenAI ImageNet templates, side by side in one run.

open_clip runs every prompt at 77 positions; vlm sorts the prompts by length and runs each
batch only up to its longest prompt (exact for the causal text tower). The class embeddings
must agree within 1e-5.

    python benchmarks/zeroshot.py --repeats 1                          # 1,000 classes x 18 templates
    python benchmarks/zeroshot.py --classes 200 --repeats 3 --busy 1   # beside one busy process
"""

from __future__ import annotations

import harness


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--templates", type=int, default=18)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(repeats=1, warmup=0)
    args = p.parse_args(argv)

    import open_clip
    import torch
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from vlm.api import Pipeline
    from vlm.classify.zeroshot import class_embeddings
    from vlm.convert.open_clip import arch_config, from_open_clip_model
    from vlm.io.images import PreprocessConfig
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    cfg = arch_config("ViT-B-32")
    model = from_open_clip_model(oc, cfg).eval()
    pipe = Pipeline(model, CLIPBPETokenizer(context_length=77), PreprocessConfig.for_model(cfg), torch.device("cpu"))
    names = list(IMAGENET_CLASSNAMES[: args.classes])
    templates = list(OPENAI_IMAGENET_TEMPLATES[: args.templates])  # callables in open_clip
    as_text = [t("{}") for t in templates]
    out: dict = {}
    diffs: list[float] = []

    def open_clip_side() -> None:
        out["ref"] = build_zero_shot_classifier(oc, open_clip.get_tokenizer("ViT-B-32"), names, templates,
                                                num_classes_per_batch=10)  # (E, C)

    def vlm_side() -> None:
        out["ours"] = class_embeddings(pipe, names, as_text)  # (C, E)

    def measure() -> dict:
        with torch.no_grad():
            res = harness.interleave({"open_clip": open_clip_side, "vlm": vlm_side}, args.repeats, warmup=args.warmup)
        diffs.append(float((out["ref"].t() - out["ours"]).abs().max()))
        return {**res, "speedup": round(harness.ratio(res, "open_clip", "vlm"), 3), "max_abs_diff": diffs[-1]}

    harness.run("zeroshot", args, measure, versions=("torch", "open_clip_torch"), extra={
        "classes": len(names), "templates": len(templates), "prompts": len(names) * len(templates),
        "threads": args.threads})
    return 0 if max(diffs) <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
