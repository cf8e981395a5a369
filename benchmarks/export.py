"""Benchmark onnxruntime (CPU) against vlm's PyTorch path on the same weights, after `vlm export onnx`.

Models: the shipped default model, and coca_ViT-B-32 at full size with random non-degenerate weights
(``tests/parity_weights.py: randomize_``; this machine cannot download real ones). For each, in one run:

- parity first: image embeddings (max |diff|) and greedy caption tokens (identical or not);
- image embedding, images/s: a batch of B images through ``model.encode_image`` (torch) and through
  ``image_encoder.onnx`` (onnxruntime), interleaved (torch, ort, torch, ort, ...) so machine noise hits
  both sides alike; medians reported;
- greedy captioning, s per batch: ``vlm.generation.decode.generate`` against ``OnnxModel.greedy`` (image
  encoder + image keys/values + cached steps), same images, same number of tokens.

Both sides get the same thread count (``--threads``). Figures go to BENCHMARKS.md.

    python benchmarks/export.py --threads 1 --reps 5 --json-out bench_export.json
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # parity_weights: the test helpers


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, pipe, args) -> dict:
    import numpy as np
    import torch

    from vlm.export import export
    from vlm.export.onnx_runtime import OnnxModel
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import generate

    model, tok = pipe.model, pipe.tokenizer
    S = model.cfg.vision.image_size
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        export(pipe, "onnx", Path(d) / "onnx", source=name)
        export_s = time.perf_counter() - t0
        ort = OnnxModel(Path(d) / "onnx", threads=args.threads)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, S, S, generator=g)
        cap_images = images[: args.caption_batch]
        np_images, np_cap = images.numpy(), cap_images.numpy()
        with torch.inference_mode():
            emb_diff = float(np.abs(ort.encode_images(np_images) - model.encode_image(images).numpy()).max())
            gen = GenerationConfig(max_tokens=args.tokens)
            ref = generate(model, cap_images, tok.sot_id, tok.eot_id, tok.pad_id, gen)
        ours = ort.greedy(np_cap, max_tokens=args.tokens)
        t_emb, o_emb, t_cap, o_cap = [], [], [], []
        for _ in range(args.reps):
            with torch.inference_mode():
                t_emb.append(_timed(lambda: model.encode_image(images)))
            o_emb.append(_timed(lambda: ort.encode_images(np_images)))
            with torch.inference_mode():
                t_cap.append(_timed(lambda: generate(model, cap_images, tok.sot_id, tok.eot_id, tok.pad_id, gen)))
            o_cap.append(_timed(lambda: ort.greedy(np_cap, max_tokens=args.tokens)))
    med = statistics.median
    out = {
        "model": name, "export_s": round(export_s, 1), "image_embeds_max_abs_diff": emb_diff,
        "greedy_tokens_identical": ours == ref, "caption_tokens": [len(r) for r in ref],
        "embed_images_per_s": {"torch": args.batch / med(t_emb), "onnxruntime": args.batch / med(o_emb)},
        "greedy_s_per_batch": {"torch": med(t_cap), "onnxruntime": med(o_cap)},
    }
    out["embed_speedup_ort_over_torch"] = out["embed_images_per_s"]["onnxruntime"] / out["embed_images_per_s"]["torch"]
    out["greedy_speedup_ort_over_torch"] = med(t_cap) / med(o_cap)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="images per embedding batch")
    p.add_argument("--caption-batch", type=int, default=2, help="images per captioning batch")
    p.add_argument("--tokens", type=int, default=20, help="greedy tokens at most")
    p.add_argument("--skip-full", action="store_true", help="only the default model")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    import onnxruntime
    import torch

    import vlm
    from vlm.api import Pipeline
    from parity_weights import randomize_
    from vlm.io.images import PreprocessConfig
    from vlm.model.coca import create_model
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.set_num_threads(args.threads)
    results = [bench("default", vlm.load(device="cpu"), args)]
    if not args.skip_full:
        model = randomize_(create_model("coca_ViT-B-32", init=False), seed=0, logit_gain=4.0).eval()
        tok = CLIPBPETokenizer(context_length=model.cfg.text.context_length)
        pipe = Pipeline(model, tok, PreprocessConfig.for_model(model.cfg), torch.device("cpu"), "coca_ViT-B-32")
        results.append(bench("coca_ViT-B-32 (random weights)", pipe, args))
    info = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": args.threads,
            "batch": args.batch, "caption_batch": args.caption_batch, "tokens": args.tokens, "reps": args.reps,
            "cpus": os.cpu_count(), "results": results}
    for r in results:
        e, c = r["embed_images_per_s"], r["greedy_s_per_batch"]
        print(f"{r['model']}: export {r['export_s']} s; |emb diff| {r['image_embeds_max_abs_diff']:.1e}; greedy "
              f"tokens identical: {r['greedy_tokens_identical']}\n"
              f"  image embedding: torch {e['torch']:.1f} img/s, onnxruntime {e['onnxruntime']:.1f} img/s "
              f"(x{r['embed_speedup_ort_over_torch']:.2f})\n"
              f"  greedy captioning ({args.caption_batch} images, {max(r['caption_tokens'])} tokens): torch "
              f"{c['torch']:.3f} s, onnxruntime {c['onnxruntime']:.3f} s (x{r['greedy_speedup_ort_over_torch']:.2f})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
