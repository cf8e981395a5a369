"""Reduced precision against open_clip in float32: greedy captioning and image embedding, plus agreement.

CoCa at open_clip's ``coca_ViT-B-32`` with random, non-degenerate weights
(``tests/parity_weights.py: randomize_``), converted to vlm; vlm runs it at fp32, bf16 and int8
(``vlm.runtime.precision.to_precision``), open_clip in float32 in its own interpreter
(``--openclip-python``: open_clip's ``CoCa.generate`` needs transformers < 4.56;
``benchmarks/openclip_worker.py``). Interleaved round by round (vlm fp32, bf16, int8, open_clip;
``benchmarks/harness.py``), medians:

- greedy: B images x N tokens, the full length forced on both sides, with each precision's memory
  floor (``benchmarks/floor.py``): encode + (N - 1) x the time to read the bytes one later step
  must read at that precision (weights of the text tower, decoder and LM head, and the cached
  image keys/values);
- image embedding: ``encode_image`` of E images;
- agreement to vlm fp32 on these random weights: image/text embedding cosine and next-token top-1
  agreement teacher-forced on fp32's greedy tokens. Random weights give nearly flat next-token
  distributions, so the token figure judges nothing about a trained model (docs/precision.md).

    python benchmarks/precision.py --openclip-python /work/venv-oc/bin/python --repeats 3 \\
        [--busy 0 1] --json-out precision.json

The agreement figures are computed once, before the timed rounds (they do not depend on load).
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/generate.py, for both sides
import time  # noqa: E402

import harness  # noqa: E402
import openclip_worker  # noqa: E402
from floor import memory_floor  # noqa: E402
from openclip_worker import EOT, PAD, SOT  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")


def agreement(models: dict, images, text) -> dict:
    """Each reduced model against fp32: embedding cosines and teacher-forced top-1 agreement."""
    import torch
    import torch.nn.functional as F

    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.runtime.precision import input_dtype

    ref = models["fp32"]
    with torch.inference_mode():
        ids = generate(ref, images, SpecialTokens(SOT, EOT, PAD), GenerationConfig(max_tokens=20, min_tokens=20))
        forced = torch.full((images.shape[0], 22), PAD, dtype=torch.long)
        for i, row in enumerate(ids):
            forced[i, : len(row) + 2] = torch.tensor([SOT, *row, EOT])
        out_ref = ref(images, forced)
        res = {}
        for name, m in models.items():
            if name == "fp32":
                continue
            x = images.to(input_dtype(m))
            out = m(x, forced)
            keep = forced[:, 1:] != PAD
            same = (out.caption_logits.float().argmax(-1) == out_ref.caption_logits.argmax(-1))[keep]
            img_cos = F.cosine_similarity(m.encode_image(x).float(), ref.encode_image(images), dim=-1)
            txt_cos = F.cosine_similarity(m.encode_text(text).float(), ref.encode_text(text), dim=-1)
            res[name] = {"next_token_agreement": float(same.float().mean()), "tokens": int(keep.sum()),
                         "image_cosine_mean": float(img_cos.mean()), "image_cosine_min": float(img_cos.min()),
                         "text_cosine_mean": float(txt_cos.mean()), "text_cosine_min": float(txt_cos.min())}
        probs = out_ref.caption_logits.softmax(-1).amax(-1)[forced[:, 1:] != PAD]
        res["fp32_median_top1_probability"] = float(probs.median())
    return res


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    openclip_worker.add_arguments(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--embed-batch", type=int, default=16, help="images per encode_image call")
    p.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    p.set_defaults(repeats=3, warmup=0)
    args = p.parse_args(argv)

    import torch

    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.runtime.precision import input_dtype, to_precision

    torch.set_num_threads(args.threads)
    oc_model, cfg, fp32 = openclip_worker.random_coca(args.arch)
    models = {name: to_precision(copy.deepcopy(fp32), name, torch.device("cpu")) for name in PRECISIONS}
    del fp32
    size = cfg.vision.image_size
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    embed_images = torch.randn(args.embed_batch, 3, size, size, generator=g)
    text = torch.randint(1, 49000, (args.batch, cfg.text.context_length), generator=g)
    text[:, 0], text[:, 20], text[:, 21:] = SOT, EOT, PAD
    agree = agreement(models, images, text)
    sp = SpecialTokens(SOT, EOT, PAD)
    gcfg = GenerationConfig(max_tokens=args.tokens, min_tokens=args.tokens)
    x = {name: images.to(input_dtype(m)) for name, m in models.items()}
    xe = {name: embed_images.to(input_dtype(m)) for name, m in models.items()}

    def vlm_side(name: str):
        def case() -> dict:
            m = models[name]
            t0 = time.perf_counter()
            generate(m, x[name], sp, gcfg)
            t1 = time.perf_counter()
            with torch.inference_mode():
                m.encode_image(xe[name])
            return {"greedy_s": t1 - t0, "embed_s": time.perf_counter() - t1}
        return case

    inputs = {"images": images, "embed_images": embed_images}
    with openclip_worker.start(args.openclip_python, args.arch, oc_model, inputs, threads=args.threads) as w:
        del oc_model
        cases = {name: vlm_side(name) for name in PRECISIONS}
        cases["open_clip"] = lambda: {"greedy_s": w.ask(op="greedy", tokens=args.tokens)["time"],
                                      "embed_s": w.ask(op="encode", batch=args.embed_batch)["time"]}

        def measure() -> dict:
            for name, m in models.items():  # warm-up: short captions on every side
                generate(m, x[name], sp, GenerationConfig(max_tokens=4, min_tokens=4))
            w.ask(op="greedy", tokens=4)
            w.ask(op="encode", batch=args.embed_batch)
            res = harness.interleave(cases, args.repeats, warmup=args.warmup)
            oc, oce = res["open_clip"]["greedy_s"]["median"], res["open_clip"]["embed_s"]["median"]
            res["open_clip"]["embed_images_per_s"] = args.embed_batch / oce
            for name, m in models.items():
                t, e = res[name]["greedy_s"]["median"], res[name]["embed_s"]["median"]
                fl = memory_floor(m, x[name], args.tokens, args.repeats, SOT)
                res[name].update(greedy_speedup=oc / t, embed_images_per_s=args.embed_batch / e,
                                 embed_speedup=oce / e, floor=fl, max_speedup=oc / fl["floor_s"],
                                 over_floor=t / fl["floor_s"])
            return res

        return harness.run("precision", args, measure, versions=("torch",), extra={
            "arch": args.arch, "batch": args.batch, "tokens": args.tokens, "embed_batch": args.embed_batch,
            "threads": args.threads, "agreement": agree, "open_clip_worker": w.info})


if __name__ == "__main__":
    raise SystemExit(main())
