"""Benchmark onnxruntime (CPU) against vlm's PyTorch path on the same weights, after `vlm export onnx`.

Models: the shipped default model, and coca_ViT-B-32 at full size with random non-degenerate weights
(``tests/parity_weights.py: randomize_``; this machine cannot download real ones). For each, in one run:

- parity first, in the set-up: image embeddings (max |diff|) and greedy caption tokens (identical or not);
- image embedding, images/s: a batch of B images through ``model.encode_image`` (torch) and through
  ``image_encoder.onnx`` (onnxruntime);
- greedy captioning, s per batch: ``vlm.generation.decode.generate`` against ``OnnxModel.greedy`` (image
  encoder + image keys/values + cached steps), same images, same number of tokens.

The four cases run interleaved round by round (torch, ort, torch, ort; ``benchmarks/harness.py``) so
machine noise hits both sides alike; medians reported. Both sides get the same thread count
(``--threads``). Figures go to BENCHMARKS.md.

    python benchmarks/export.py --threads 1 --repeats 5 --json-out bench_export.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402


def prepare(name: str, pipe, folder: Path, args) -> dict:
    """Export ``pipe`` to ``folder``, check parity; the inputs and the four timed cases."""
    import numpy as np
    import torch

    from vlm.export import export
    from vlm.export.onnx_runtime import OnnxModel
    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate

    model, tok = pipe.model, pipe.tokenizer
    S = model.cfg.vision.image_size
    t0 = time.perf_counter()
    export(pipe, "onnx", folder, source=name)
    export_s = time.perf_counter() - t0
    ort = OnnxModel(folder, threads=args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, S, S, generator=g)
    cap_images = images[: args.caption_batch]
    np_images, np_cap = images.numpy(), cap_images.numpy()
    gen = GenerationConfig(max_tokens=args.tokens)
    special = SpecialTokens(tok.sot_id, tok.eot_id, tok.pad_id)  # no tokenizer: no guards, as OnnxModel.greedy
    caption = lambda: generate(model, cap_images, special, gen)  # noqa: E731
    with torch.inference_mode():
        emb_diff = float(np.abs(ort.encode_images(np_images) - model.encode_image(images).numpy()).max())
        ref = caption()
    ours = ort.greedy(np_cap, max_tokens=args.tokens)

    def torch_embed() -> None:
        with torch.inference_mode():
            model.encode_image(images)

    def ort_embed() -> None:
        ort.encode_images(np_images)

    def torch_greedy() -> None:
        with torch.inference_mode():
            caption()

    def ort_greedy() -> None:
        ort.greedy(np_cap, max_tokens=args.tokens)

    cases = {"torch embed": torch_embed, "onnxruntime embed": ort_embed,
             "torch greedy": torch_greedy, "onnxruntime greedy": ort_greedy}
    parity = {"model": name, "export_s": round(export_s, 1), "image_embeds_max_abs_diff": emb_diff,
              "greedy_tokens_identical": ours == ref, "caption_tokens": [len(r) for r in ref]}
    return {"parity": parity, "cases": cases}


def figures(res: dict, batch: int) -> dict:
    """images/s and s per batch (medians) and onnxruntime's speed-up, from one model's interleaved result."""
    emb = {side: batch / res[f"{side} embed"]["median"] for side in ("torch", "onnxruntime")}
    cap = {side: res[f"{side} greedy"]["median"] for side in ("torch", "onnxruntime")}
    return {"embed_images_per_s": emb, "greedy_s_per_batch": cap,
            "embed_speedup_ort_over_torch": emb["onnxruntime"] / emb["torch"],
            "greedy_speedup_ort_over_torch": cap["torch"] / cap["onnxruntime"], "timings": res}


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8, help="images per embedding batch")
    p.add_argument("--caption-batch", type=int, default=2, help="images per captioning batch")
    p.add_argument("--tokens", type=int, default=20, help="greedy tokens at most")
    p.add_argument("--skip-full", action="store_true", help="only the default model")
    p.set_defaults(warmup=0)  # the parity run in the set-up is the warm-up
    args = p.parse_args(argv)

    import torch

    import vlm
    from vlm.api import Pipeline
    from vlm.io.images import PreprocessConfig
    from vlm.model.coca import create_model
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    sys.path.insert(0, str(harness.REPO / "tests"))  # parity_weights: a test helper
    from parity_weights import randomize_

    torch.set_num_threads(args.threads)
    pipes = {"default": vlm.load(device="cpu")}
    if not args.skip_full:
        model = randomize_(create_model("coca_ViT-B-32", init=False), seed=0, logit_gain=4.0).eval()
        tok = CLIPBPETokenizer(context_length=model.cfg.text.context_length)
        pipes["coca_ViT-B-32 (random weights)"] = Pipeline(model, tok, PreprocessConfig.for_model(model.cfg),
                                                           torch.device("cpu"), "coca_ViT-B-32")
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: prepare(name, pipe, Path(tmp) / f"onnx{i}", args) for i, (name, pipe) in enumerate(pipes.items())}

        def measure() -> dict:
            return {"results": [{**m["parity"], **figures(harness.interleave(m["cases"], args.repeats, args.warmup),
                                                          args.batch)} for m in models.values()]}

        return harness.run("export", args, measure, versions=("torch", "onnxruntime"), extra={
            "threads": args.threads, "batch": args.batch, "caption_batch": args.caption_batch, "tokens": args.tokens})


if __name__ == "__main__":
    raise SystemExit(main())
