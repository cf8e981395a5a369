"""Zero-shot classifier build at scale: vlm's ``class_embeddings`` vs open_clip's
``build_zero_shot_classifier`` with the same weights (open_clip ViT-B-32, random init, converted
to vlm), ImageNet class names x the first 18 OpenAI ImageNet templates, side by side in one run.

open_clip runs every prompt at 77 positions; vlm sorts the prompts by length and runs each
batch only up to its longest prompt (exact for the causal text tower). The class embeddings
must agree within 1e-5.

    python scripts/benchmark_zeroshot.py                          # 1,000 classes x 18 templates
    python scripts/benchmark_zeroshot.py --classes 200 --busy 1   # beside one busy process
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--templates", type=int, default=18)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--busy", type=int, default=0, help='start N `python -c "while 1: pass"` neighbours')
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
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = build_zero_shot_classifier(oc, open_clip.get_tokenizer("ViT-B-32"), names, templates,
                                             num_classes_per_batch=10)  # (E, C)
            t_oc = time.perf_counter() - t0
            t0 = time.perf_counter()
            ours = class_embeddings(pipe, names, as_text)  # (C, E)
            t_vlm = time.perf_counter() - t0
    finally:
        for b in busy:
            b.kill()
    diff = float((ref.t() - ours).abs().max())
    out = {"classes": len(names), "templates": len(templates), "prompts": len(names) * len(templates),
           "open_clip_s": round(t_oc, 2), "vlm_s": round(t_vlm, 2), "speedup": round(t_oc / t_vlm, 2),
           "max_abs_diff": diff, "threads": args.threads, "busy": args.busy, "machine": platform.processor() or
           platform.machine()}
    print(json.dumps(out))
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
