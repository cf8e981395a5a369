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
process; weights and inputs travel in a safetensors file, commands and results as JSON lines.

    python benchmarks/generate.py --openclip-python /work/venv-oc/bin/python --repeats 5 \
        --beam-repeats 3 --threads 2 --json-out bench.json
    # speed on a busy machine (issue 13 item 22): greedy only, the CLI's thread choice, idle then 2 busy
    python benchmarks/generate.py --openclip-python /work/venv-oc/bin/python --skip beam train \
        --repeats 3 --threads auto --busy 0 2 --busy-kind matmul --json-out busy.json
"""

from __future__ import annotations

import argparse
import json
import os

# OpenMP threads that spin while waiting for each other stall badly when the cores are shared
# (the benchmark machine runs other jobs); a passive wait policy, set for both sides alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # noqa: E402

sys.path.insert(0, str(harness.REPO / "tests"))  # parity_weights: the test helpers

SOT, EOT, PAD = 49406, 49407, 0


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


# ------------------------------------------------------------------ open_clip worker


def worker(args) -> None:
    """Runs in the open_clip interpreter: answers {"op": ...} lines on stdin with JSON lines."""
    import copy

    import open_clip
    import torch
    from open_clip.loss import CoCaLoss
    from safetensors.torch import load_file

    _set_threads(args.threads)
    data = load_file(args.state)
    images, text = data.pop("__images__"), data.pop("__text__")
    train_images, train_text = data.pop("__train_images__"), data.pop("__train_text__")
    model = open_clip.create_model(args.arch)
    model.load_state_dict(data)
    model.eval()
    train_model = opt = None
    loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=PAD)
    reply = lambda obj: (sys.stdout.write(json.dumps(obj) + "\n"), sys.stdout.flush())  # noqa: E731
    reply({"ready": True, "transformers": __import__("transformers").__version__,
           "open_clip": open_clip.__version__, "torch": torch.__version__})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "threads":
            _set_threads(cmd["n"])
            reply({"threads": cmd["n"]})
            continue
        if op == "train_reset":  # each --busy round trains afresh from the same weights, as vlm's side does
            train_model = opt = None
            reply({"train_reset": True})
            continue
        if op in ("greedy", "beam"):
            n = cmd["tokens"]
            kw = dict(seq_len=n + 1, min_seq_len=n, sot_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD)
            if op == "greedy":
                kw.update(generation_type="top_k", top_k=1, fixed_output_length=True)
            else:
                kw.update(generation_type="beam_search", num_beams=cmd["beams"], num_beam_groups=1)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(images, **kw)
            dt = time.perf_counter() - t0
            reply({"time": dt, "tokens": out[:, 1:].tolist()})
        elif op == "encode":  # image embeddings of the first `batch` training images (benchmarks/precision.py)
            x = train_images[: cmd["batch"]]
            t0 = time.perf_counter()
            with torch.no_grad():
                emb = model.encode_image(x, normalize=True)
            reply({"time": time.perf_counter() - t0, "first": emb[0, :4].tolist()})
        elif op == "train":
            if train_model is None:
                train_model = copy.deepcopy(model).train()
                opt = torch.optim.AdamW(train_model.parameters(), lr=1e-5)
            t0 = time.perf_counter()
            out = train_model(train_images, train_text)
            losses = loss_fn(**out, output_dict=True)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            dt = time.perf_counter() - t0
            reply({"time": dt, "loss": float(total.detach()),
                   "parts": {k: float(v.detach()) for k, v in losses.items()}})


class Worker:
    def __init__(self, python: str, state: str, arch: str, threads: int):
        cmd = [python, os.path.abspath(__file__), "--worker", "--state", state, "--arch", arch,
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"open_clip worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- vlm side


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--openclip-python", default="/work/venv-oc/bin/python",
                   help="interpreter with open_clip_torch and transformers<4.56")
    p.add_argument("--arch", default="coca_ViT-B-32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--beam-repeats", type=int, default=3, help="timed beam-search rounds per side")
    p.add_argument("--threads", default="2", help="torch threads on each side, or 'auto': what the vlm CLI "
                   "chooses for the machine as it is at the start of each --busy round (vlm/runtime/threads.py)")
    p.add_argument("--skip", nargs="*", default=[], choices=["greedy", "beam", "train"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import open_clip
    import torch
    from safetensors.torch import save_file

    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from parity_weights import randomize_

    torch.manual_seed(0)
    oc_model = randomize_(open_clip.create_model(args.arch), seed=0, logit_gain=4.0).eval()
    cfg = config_from_open_clip(open_clip.get_model_config(args.arch))
    model = from_open_clip_model(oc_model, cfg).eval()
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
    text = train_text[: args.batch].clone()
    with tempfile.TemporaryDirectory() as tmp:
        state_path = os.path.join(tmp, "state.safetensors")
        state = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
        state.update(__images__=images, __text__=text, __train_images__=train_images, __train_text__=train_text)
        save_file(state, state_path)
        del state, oc_model
        w = Worker(args.openclip_python, state_path, args.arch, 1)
        try:
            def measure() -> dict:
                threads = args.threads
                if threads == "auto":
                    from vlm.runtime.threads import choose, usable_cpus

                    threads = choose(usable_cpus(), os.getloadavg()[0])
                _set_threads(int(threads))
                w.ask(op="threads", n=int(threads))
                return {"threads": int(threads), **run(args, model, images, train_images, train_text, w)}

            return harness.run("generate", args, measure, versions=("torch",), extra={
                "arch": args.arch, "batch": args.batch, "tokens": args.tokens, "beam_repeats": args.beam_repeats,
                "open_clip_worker": w.info})
        finally:
            w.close()


def _stats(res: dict, tokens: int) -> dict:
    """The harness's interleaved result, with tokens/s and open_clip's median over vlm's."""
    v, o = res["vlm"]["median"], res["open_clip"]["median"]
    return {"vlm": res["vlm"], "open_clip": res["open_clip"], "vlm_tokens_per_s": round(tokens / v, 2),
            "open_clip_tokens_per_s": round(tokens / o, 2), "speedup": round(o / v, 3),
            "pair_speedups": [round(b / a, 2) for a, b in zip(res["vlm"]["all"], res["open_clip"]["all"])]}


def memory_floor(model, images, tokens: int, reps: int) -> dict:
    """A lower bound on any float32 greedy decoder with a key/value cache, on this machine as it is.

    The image tower and the first step (which computes the image keys/values of every
    cross-attention layer) are timed as vlm runs them: dense matrix products, compute-bound.
    Every later step must read each weight matrix of the text tower, the decoder and the LM
    head once, and the cached image keys/values, for a handful of rows: memory-bound. That
    step is bounded below by the time it takes merely to read those bytes (``Tensor.sum`` over
    each, no arithmetic to speak of). floor = encode + (tokens - 1) x read.
    """
    import torch

    from vlm.generation.decode import _Stepper
    from vlm.model.packed_linear import packed_linears

    sot = torch.full((images.shape[0], 1), SOT, dtype=torch.long)
    enc, read = [], []
    with torch.inference_mode(), packed_linears([model.text.transformer, model.decoder], images.shape[0]):
        for _ in range(reps):
            t0 = time.perf_counter()
            step = _Stepper(model, model.visual(images).tokens)
            step(sot)
            enc.append(time.perf_counter() - t0)
        weights = [p.detach() for m in (model.text.transformer, model.decoder)
                   for name, p in m.named_parameters() if "kv_proj" not in name]  # kv_proj: first step only
        image_kv = [t for layer in step.dec_cache.layers[1::2] for t in (layer.k, layer.v)]
        tensors = weights + image_kv
        for _ in range(reps):
            t0 = time.perf_counter()
            for t in tensors:
                t.sum()
            read.append(time.perf_counter() - t0)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    e, r = statistics.median(enc), statistics.median(read)
    return {"encode_s": e, "read_per_step_s": r, "bytes_per_step": nbytes, "read_gb_per_s": nbytes / r / 1e9,
            "floor_s": e + (tokens - 1) * r}


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
        floor = memory_floor(model, images, n, args.repeats)
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
