"""The cost of the word list while decoding: the default model's captions with and without it.

Greedy, beam search and top-p sampling of one batch of shapes scenes (``vlm data shapes``
images, or any images given), each timed with the checkpoint's word list (``vlm.generation.lexicon``)
and without it (the decoding guards on in both), interleaved ABBA after a warm-up round
(``benchmarks/harness.py``) so machine noise hits both alike; medians of wall and CPU time
(``time.process_time``, less hit by other processes on a shared machine). The captions with
the list are checked equal to those without it.

    python benchmarks/lexicon.py --images data/shapes_val/images --n 16 --repeats 7
"""

from __future__ import annotations

import time
from pathlib import Path

import harness


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--n", type=int, default=16, help="images in the batch")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(repeats=7)
    args = p.parse_args(argv)

    import torch

    import vlm
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import generate

    torch.set_num_threads(args.threads)
    pipe = vlm.load(device="cpu")
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.n]
    x = pipe.images_to_tensor(paths)
    if pipe.lexicon is None:
        raise SystemExit("the default model has no word list (metadata.caption_words)")
    decodings = {"greedy": GenerationConfig(), "beam 3": GenerationConfig(beams=3),
                 "top-p 0.9": GenerationConfig(top_p=0.9, seed=0)}

    def case(cfg, lexicon, out: dict, key: str):
        def run() -> dict:
            start, start_cpu = time.perf_counter(), time.process_time()
            out[key] = generate(pipe.model, x, pipe.tokenizer, cfg, lexicon=lexicon)
            return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu}
        return run

    def measure() -> dict:
        res = {}
        for name, cfg in decodings.items():
            out: dict = {}
            cases = {"without": case(cfg, None, out, "without"), "with": case(cfg, pipe.lexicon, out, "with")}
            r = harness.interleave(cases, args.repeats, warmup=args.warmup, abba=True)
            r["with / without"] = {k: round(harness.ratio(r, "with", "without", k), 3) for k in ("wall_s", "cpu_s")}
            r["same_captions"] = out["with"] == out["without"]
            res[name] = r
        return res

    return harness.run("lexicon", args, measure, extra={"images": len(paths), "threads": args.threads})


if __name__ == "__main__":
    raise SystemExit(main())
