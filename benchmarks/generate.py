"""Caption generation and a training step: vlm vs open_clip on the same CoCa weights, idle and busy.

CoCa (Yu et al. 2022) at open_clip's real ``coca_ViT-B-32`` architecture with random,
non-degenerate weights (``tests/parity_weights.py: randomize_``), converted to vlm with
``vlm.convert.open_clip``. Interleaved round by round (vlm, open_clip, vlm, ...;
``benchmarks/harness.py``) so machine noise hits both sides alike; medians are reported:

- greedy: B images x N tokens, the full length forced on both sides (vlm
  ``min_tokens = max_tokens = N``; open_clip ``seq_len = N + 1, min_seq_len = N``, top-k 1,
  i.e. greedy). The first N - 1 tokens must be identical (open_clip forces its last
  token to end-of-text). Beside it, the float32 memory floor of any cached greedy decoder;
- beam search with K beams, same lengths (open_clip's ``CoCa.generate(generation_type="beam_search",
  num_beam_groups=1)``);
- a training step: forward + CoCa loss (contrastive + 2 x caption) + backward + AdamW step,
  vlm's ``CoCaLoss`` vs open_clip's ``CoCaLoss``; first-step losses are compared.

open_clip 3.3's ``CoCa.generate`` needs transformers < 4.56, so the open_clip side runs in its
own interpreter (``--openclip-python``, e.g. a venv with ``transformers==4.55.*``) as a worker
process (``benchmarks/openclip_worker.py``). The floor is ``benchmarks/floor.py``.

    python benchmarks/generate.py --openclip-python /work/venv-oc/bin/python --repeats 5 \
        --beam-repeats 3 --threads 2 --json-out bench.json
    # speed on a busy machine (issue 13 item 22): greedy only, the CLI's thread choice, idle then 2 busy
    python benchmarks/generate.py --openclip-python /work/venv-oc/bin/python --skip beam train \
        --repeats 3 --threads auto --busy 0 2 --busy-kind matmul --json-out busy.json
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting for each other stall badly when the cores are shared
# (the benchmark machine runs other jobs); a passive wait policy, set for both sides alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys  # noqa: E402
import time  # noqa: E402

import harness  # noqa: E402
import openclip_worker  # noqa: E402
from floor import memory_floor  # noqa: E402
from openclip_worker import EOT, PAD, SOT  # noqa: E402


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    openclip_worker.add_arguments(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--beam-repeats", type=int, default=3, help="timed beam-search rounds per side")
    p.add_argument("--threads", default="2", help="torch threads on each side, or 'auto': what the vlm CLI "
                   "chooses for the machine as it is at the start of each --busy round (vlm/runtime/threads.py)")
    p.add_argument("--skip", nargs="*", default=[], choices=["greedy", "beam", "train"])
    args = p.parse_args(argv)

    import torch

    oc_model, cfg, model = openclip_worker.random_coca(args.arch)
    size = cfg.vision.image_size
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    train_images = torch.randn(args.train_batch, 3, size, size, generator=g)
    L = cfg.text.context_length
    train_text = torch.randint(1, 49000, (args.train_batch, L), generator=g)
    train_text[:, 0] = SOT
    for i in range(args.train_batch):  # captions of varied lengths, then padding
        n = 8 + (i * 5) % (L - 10)
        train_text[i, n] = EOT
        train_text[i, n + 1:] = PAD
    inputs = {"images": images, "train_images": train_images, "train_text": train_text}
    with openclip_worker.start(args.openclip_python, args.arch, oc_model, inputs, threads=1) as w:
        del oc_model

        def measure() -> dict:
            threads = args.threads
            if threads == "auto":
                from vlm.runtime.threads import choose, usable_cpus

                threads = choose(usable_cpus(), os.getloadavg()[0])
            torch.set_num_threads(int(threads))
            w.ask(op="threads", n=int(threads))
            return {"threads": int(threads), **run(args, model, images, train_images, train_text, w)}

        return harness.run("generate", args, measure, versions=("torch",), extra={
            "arch": args.arch, "batch": args.batch, "tokens": args.tokens, "beam_repeats": args.beam_repeats,
            "open_clip_worker": w.info})


def _stats(res: dict, tokens: int) -> dict:
    """The harness's interleaved result, with tokens/s and open_clip's median over vlm's."""
    v, o = res["vlm"]["median"], res["open_clip"]["median"]
    return {"vlm": res["vlm"], "open_clip": res["open_clip"], "vlm_tokens_per_s": round(tokens / v, 2),
            "open_clip_tokens_per_s": round(tokens / o, 2), "speedup": round(o / v, 3),
            "pair_speedups": [round(b / a, 2) for a, b in zip(res["vlm"]["all"], res["open_clip"]["all"])]}


def run(args, model, images, train_images, train_text, w) -> dict:
    import copy

    import torch

    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.model.packed_linear import clear_cache
    from vlm.training.losses import CoCaLoss

    res: dict = {}
    n, special = args.tokens, SpecialTokens(SOT, EOT, PAD)
    out: dict = {}  # the last outputs of each side, compared after the timing
    if "greedy" not in args.skip:
        gcfg = GenerationConfig(max_tokens=n, min_tokens=n)
        generate(model, images, special, GenerationConfig(max_tokens=4, min_tokens=4))  # warm-up
        w.ask(op="greedy", tokens=4)
        clear_cache(model)  # one cold call: weights packed inside the timing
        t0 = time.perf_counter()
        generate(model, images, special, gcfg)
        cold = time.perf_counter() - t0
        timed = harness.interleave({
            "vlm": lambda: out.__setitem__("vlm", generate(model, images, special, gcfg)),
            "open_clip": lambda: out.__setitem__("oc", w.ask(op="greedy", tokens=n)) or out["oc"]["time"],
        }, args.repeats, warmup=0)
        ours, theirs = out["vlm"], out["oc"]["tokens"]
        assert all(len(r) == n for r in ours) and all(len(r) == n for r in theirs), "lengths differ"
        same = [a[: n - 1] == b[: n - 1] for a, b in zip(ours, theirs)]
        res["greedy"] = {**_stats(timed, args.batch * n), "vlm_cold_s": round(cold, 4),
                         "identical_first_n_minus_1": all(same), "rows_identical": sum(same),
                         "example_vlm": ours[0][:10], "example_open_clip": theirs[0][:10]}
        floor = memory_floor(model, images, n, args.repeats, SOT)
        floor["max_speedup"] = timed["open_clip"]["median"] / floor["floor_s"]
        floor["vlm_over_floor"] = timed["vlm"]["median"] / floor["floor_s"]
        res["greedy"]["floor"] = floor
    if "beam" not in args.skip:
        bcfg = GenerationConfig(max_tokens=n, min_tokens=n, beams=args.beams)
        generate(model, images, special, GenerationConfig(max_tokens=4, min_tokens=4, beams=args.beams))
        w.ask(op="beam", tokens=4, beams=args.beams)  # warm-up
        timed = harness.interleave({
            "vlm": lambda: out.__setitem__("vlm", generate(model, images, special, bcfg)),
            "open_clip": lambda: out.__setitem__("oc", w.ask(op="beam", tokens=n, beams=args.beams)) or out["oc"]["time"],
        }, args.beam_repeats, warmup=0)
        res["beam"] = {**_stats(timed, args.batch * n), "beams": args.beams,
                       "vlm_lengths": sorted({len(r) for r in out["vlm"]}),
                       "open_clip_lengths": sorted({len([t for t in r if t != PAD]) for r in out["oc"]["tokens"]})}
    if "train" not in args.skip:
        clear_cache(model)
        w.ask(op="train_reset")
        tm = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(tm.parameters(), lr=1e-5)
        loss_fn = CoCaLoss(contrastive_weight=1.0, caption_weight=2.0, pad_id=PAD)
        vl, ol = [], []

        def vlm_step() -> None:
            parts = loss_fn(tm(train_images, train_text))
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            opt.step()
            vl.append(float(parts["total"].detach()))

        def oc_step() -> float:
            theirs = w.ask(op="train")
            ol.append(theirs["loss"])
            return theirs["time"]

        # the first step is the warm-up round; its losses are the ones compared (same weights both sides)
        timed = harness.interleave({"vlm": vlm_step, "open_clip": oc_step}, args.repeats, warmup=1)
        res["train"] = {"batch": args.train_batch, "vlm": timed["vlm"], "open_clip": timed["open_clip"],
                        "speedup": round(timed["open_clip"]["median"] / timed["vlm"]["median"], 3),
                        "vlm_losses": vl, "open_clip_losses": ol, "first_loss_abs_diff": abs(vl[0] - ol[0])}
    return res


if __name__ == "__main__":
    sys.exit(main())
