"""The cost of the word list while decoding: the default model's captions with and without it.

Greedy, beam search and top-p sampling of one batch of shapes scenes (``vlm data shapes``
images, or any images given), each timed with the checkpoint's word list (``vlm.generation.lexicon``) and
without it (the decoding guards on in both), interleaved (ABBA, after a warm-up) so machine noise hits both alike;
medians of wall and CPU time (``time.process_time``, less hit by other
processes on a shared machine) are printed. The captions with the list are checked equal to those without it.

    python benchmarks/lexicon.py --images data/shapes_val/images --n 16 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--n", type=int, default=16, help="images in the batch")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    import vlm
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import generate

    torch.set_num_threads(args.threads)
    pipe = vlm.load(device="cpu")
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.n]
    x = pipe.images_to_tensor(paths)
    lexicon = pipe.lexicon
    if lexicon is None:
        raise SystemExit("the default model has no word list (metadata.caption_words)")
    for name, cfg in (("greedy", GenerationConfig()), ("beam 3", GenerationConfig(beams=3)),
                      ("top-p 0.9", GenerationConfig(top_p=0.9, seed=0))):
        times: dict[str, list[float]] = {"without": [], "with": []}
        cpu: dict[str, list[float]] = {"without": [], "with": []}
        out = {}
        pair = (("without", None), ("with", lexicon))
        generate(pipe.model, x, pipe.tokenizer, cfg, lexicon=lexicon)  # warm-up: the trie nodes are worked out once
        for rep in range(args.reps):
            for key, lex in pair if rep % 2 == 0 else pair[::-1]:  # ABBA order
                start, start_cpu = time.perf_counter(), time.process_time()
                out[key] = generate(pipe.model, x, pipe.tokenizer, cfg, lexicon=lex)
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
        a, b = statistics.median(times["without"]), statistics.median(times["with"])
        ca, cb = statistics.median(cpu["without"]), statistics.median(cpu["with"])
        print(f"{name:10s} {len(paths)} images: without the list {a * 1e3:6.1f} ms (cpu {ca * 1e3:6.1f}), "
              f"with it {b * 1e3:6.1f} ms (cpu {cb * 1e3:6.1f}): {b / a:.3f}x (cpu {cb / ca:.3f}x); "
              f"same captions: {out['with'] == out['without']}")


if __name__ == "__main__":
    main()
