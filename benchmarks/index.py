"""Indexing throughput: `vlm.index.build` vs open_clip's `encode_image` loop over the same JPEGs.

CLIP ViT-B/32 at its real layout with random weights (the same weights on both sides: the open_clip
model is converted), on the CPU with the same torch thread count. Both sides decode and preprocess
the JPEGs (open_clip: its own eval transform, in the loop; vlm: DataLoader workers) and embed them;
vlm also writes shards, parquet and the faiss index. The two are interleaved and repeated and
medians compared, because the machine is shared. Also: an unchanged re-run (incremental).

    python benchmarks/index.py [--n 256] [--threads 2] [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """COCO-sized (640x480 / 480x640) procedural photos: gradients, noise and shapes, quality 90."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = (640, 480) if i % 3 else (480, 640)
        base = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3) + \
            np.linspace(1, 0, h)[:, None, None] * rng.uniform(0, 255, 3)
        arr = np.clip(base / 2 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, w), rng.integers(0, h)
            r = int(rng.integers(20, 120))
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        p = folder / f"{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def open_clip_loop(model, preprocess, paths, batch_size: int) -> tuple[float, np.ndarray]:
    from PIL import Image

    start = time.perf_counter()
    out = []
    with torch.no_grad():
        for s in range(0, len(paths), batch_size):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[s:s + batch_size]])
            out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy())
    return time.perf_counter() - start, np.concatenate(out)


def vlm_build(pipe, folder: Path, out: Path, batch_size: int, workers: int, precision: str) -> tuple[float, object]:
    import vlm.index

    start = time.perf_counter()
    report = vlm.index.build([folder], out, pipeline=pipe, batch_size=batch_size, workers=workers,
                             precision=precision)
    return time.perf_counter() - start, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import open_clip

    from vlm.api import Pipeline
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from vlm.io.images import PreprocessConfig
    from vlm.index.sources import gather
    from vlm.index.store import committed_shards
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.manual_seed(0)
    oc, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    oc.eval()
    cfg = config_from_open_clip(open_clip.get_model_config("ViT-B-32"))
    model = from_open_clip_model(oc, cfg).eval()
    pipe = Pipeline(model, CLIPBPETokenizer(), PreprocessConfig.for_model(cfg), torch.device("cpu"), name="ViT-B-32-random")
    import copy

    from vlm.runtime.precision import to_precision

    pipes = {"fp32": pipe, "bf16": copy.copy(pipe)}  # the same pipeline with a bfloat16 copy of the model
    pipes["bf16"].model = to_precision(copy.deepcopy(model), "bf16", torch.device("cpu"))
    pipes["bf16"].precision = "bf16"

    tmp = Path(tempfile.mkdtemp(prefix="bench_index_"))
    paths = make_jpegs(tmp / "jpegs", args.n)
    files = [Path(r.key) for r in gather([str(tmp / "jpegs")]).records]  # same order as the index rows
    res: dict = {"open_clip": [], "vlm_fp32": [], "vlm_bf16": []}
    ref = None
    reports = {}
    for rep in range(args.repeats):
        dt, ref = open_clip_loop(oc, preprocess, files, args.batch_size)
        res["open_clip"].append(args.n / dt)
        for precision in ("fp32", "bf16"):
            out = tmp / f"idx_{precision}_{rep}"
            dt, reports[precision] = vlm_build(pipes[precision], tmp / "jpegs", out, args.batch_size, args.workers,
                                               precision)
            res[f"vlm_{precision}"].append(args.n / dt)
            if rep == 0:
                vec = np.concatenate([s.vectors() for s in committed_shards(out)])
                reports[precision + "_cos"] = float(np.min(np.sum(vec * ref, axis=1)))
        print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in res.items()), flush=True)
    t0 = time.perf_counter()
    again = vlm_build(pipe, tmp / "jpegs", tmp / "idx_fp32_0", args.batch_size, args.workers, "fp32")[1]
    rerun = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in res.items()}
    summary = {
        "images": args.n, "threads": args.threads, "batch_size": args.batch_size, "workers": args.workers,
        "images_per_second": {k: round(v, 2) for k, v in med.items()},
        "ratio_vlm_fp32_over_open_clip": round(med["vlm_fp32"] / med["open_clip"], 3),
        "ratio_vlm_bf16_over_open_clip": round(med["vlm_bf16"] / med["open_clip"], 3),
        "min_cosine_to_open_clip": {"fp32": round(reports["fp32_cos"], 6), "bf16": round(reports["bf16_cos"], 6)},
        "unchanged_rerun_seconds": round(rerun, 3), "unchanged_rerun_embedded": again.embedded,
        "unchanged_rerun_fraction_of_full_run": round(rerun / (args.n / med["vlm_fp32"]), 4),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
