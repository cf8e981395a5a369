"""Indexing throughput: `vlm.index.build` vs open_clip's `encode_image` loop over the same JPEGs.

CLIP ViT-B/32 at its real layout with random weights (the same weights on both sides: the open_clip
model is converted), on the CPU with the same torch thread count. Both sides decode and preprocess
the JPEGs (open_clip: its own eval transform, in the loop; vlm: DataLoader workers) and embed them;
vlm also writes shards, parquet and the faiss index (fp32, and bf16 autocast). The three run
interleaved round by round (``benchmarks/harness.py``) and medians are compared, because the machine
is shared. The set-up runs each once (the warm-up) and checks the cosine of vlm's vectors to
open_clip's. Also: an unchanged re-run (incremental) after the timed rounds.

    python benchmarks/index.py [--n 256] [--threads 2] [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import harness


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


def open_clip_loop(model, preprocess, paths, batch_size: int) -> np.ndarray:
    import torch
    from PIL import Image

    out = []
    with torch.no_grad():
        for s in range(0, len(paths), batch_size):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[s:s + batch_size]])
            out.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy())
    return np.concatenate(out)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(repeats=3, warmup=0)  # the set-up's parity run is the warm-up
    args = p.parse_args(argv)

    import open_clip
    import torch

    import vlm.index
    from vlm.api import Pipeline
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from vlm.index.sources import gather
    from vlm.index.store import committed_shards
    from vlm.io.images import PreprocessConfig
    from vlm.runtime.precision import to_precision
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    oc, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    oc.eval()
    cfg = config_from_open_clip(open_clip.get_model_config("ViT-B-32"))
    model = from_open_clip_model(oc, cfg).eval()
    pipe = Pipeline(model, CLIPBPETokenizer(), PreprocessConfig.for_model(cfg), torch.device("cpu"), name="ViT-B-32-random")
    pipes = {"fp32": pipe, "bf16": copy.copy(pipe)}  # the same pipeline with a bfloat16 copy of the model
    pipes["bf16"].model = to_precision(copy.deepcopy(model), "bf16", torch.device("cpu"))
    pipes["bf16"].precision = "bf16"

    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp_name:
        tmp = Path(tmp_name)
        make_jpegs(tmp / "jpegs", args.n)
        files = [Path(r.key) for r in gather([str(tmp / "jpegs")]).records]  # same order as the index rows

        def build(precision: str, out: Path):
            return vlm.index.build([tmp / "jpegs"], out, pipeline=pipes[precision], batch_size=args.batch_size,
                                   workers=args.workers, precision=precision)

        ref = open_clip_loop(oc, preprocess, files, args.batch_size)
        cosine = {}
        for precision in pipes:  # parity, and the warm-up of each side
            build(precision, tmp / f"idx_{precision}")
            vec = np.concatenate([s.vectors() for s in committed_shards(tmp / f"idx_{precision}")])
            cosine[precision] = round(float(np.min(np.sum(vec * ref, axis=1))), 6)

        def timed_build(precision: str):
            def case() -> float:
                t0 = time.perf_counter()
                build(precision, tmp / "timed")
                dt = time.perf_counter() - t0
                shutil.rmtree(tmp / "timed")  # every timed run builds from nothing
                return dt
            return case

        def open_clip_side() -> None:
            open_clip_loop(oc, preprocess, files, args.batch_size)

        cases = {"open_clip": open_clip_side, "vlm_fp32": timed_build("fp32"), "vlm_bf16": timed_build("bf16")}

        def measure() -> dict:
            res = harness.interleave(cases, args.repeats, warmup=args.warmup)
            t0 = time.perf_counter()
            again = build("fp32", tmp / "idx_fp32")  # unchanged: nothing to embed
            rerun = time.perf_counter() - t0
            med = {k: res[k]["median"] for k in cases}
            return {"seconds": res, "images_per_second": {k: round(args.n / v, 2) for k, v in med.items()},
                    **{f"ratio_{k}_over_open_clip": round(harness.ratio(res, "open_clip", k), 3)
                       for k in ("vlm_fp32", "vlm_bf16")},
                    "ratio_per_round": {k: [round(o / v, 2) for o, v in zip(res["open_clip"]["all"], res[k]["all"])]
                                        for k in ("vlm_fp32", "vlm_bf16")},
                    "unchanged_rerun_seconds": round(rerun, 3), "unchanged_rerun_embedded": again.embedded,
                    "unchanged_rerun_fraction_of_full_run": round(rerun / med["vlm_fp32"], 4)}

        return harness.run("index", args, measure, versions=("torch", "open_clip_torch", "faiss-cpu"), extra={
            "images": args.n, "threads": args.threads, "batch_size": args.batch_size, "workers": args.workers,
            "min_cosine_to_open_clip": cosine})


if __name__ == "__main__":
    raise SystemExit(main())
