"""Benchmark vlm against open_clip on the same CoCa weights: caption generation and a training step.

CoCa (Yu et al. 2022) at open_clip's real ``coca_ViT-B-32`` architecture with random,
non-degenerate weights (``tests/parity_weights.py: randomize_``), converted to vlm with
``vlm.convert.open_clip``. Measured in one run, interleaved (vlm, open_clip, vlm,
open_clip, ...) so machine noise hits both sides alike; medians are reported:

- greedy: B images x N tokens, the full length forced on both sides (vlm
  ``min_tokens = max_tokens = N``; open_clip ``seq_len = N + 1, min_seq_len = N``, top-k 1,
  i.e. greedy). The first N - 1 tokens must be identical (open_clip forces its last
  token to end-of-text);
- beam search with K beams, same lengths (open_clip's ``CoCa.generate(generation_type="beam_search",
  num_beam_groups=1)``);
- a training step: forward + CoCa loss (contrastive + 2 x caption) + backward + AdamW step,
  vlm's ``CoCaLoss`` vs open_clip's ``CoCaLoss``; first-step losses are compared.

open_clip 3.3's ``CoCa.generate`` needs transformers < 4.56, so the open_clip side runs in its
own interpreter (``--openclip-python``, e.g. a venv with ``transformers==4.55.*``) as a worker
process; weights and inputs travel in a safetensors file, commands and results as JSON lines.

    python scripts/benchmark_generate.py --openclip-python /work/venv-oc/bin/python --reps 5 \
        --json-out bench.json
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # parity_weights: the test helpers

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
        elif op == "encode":  # image embeddings of the first `batch` training images (scripts/benchmark_precision.py)
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


def machine() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for ln in out.splitlines():
            if ln.startswith("Model name:"):
                model = ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs visible"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openclip-python", default="/work/venv-oc/bin/python",
                   help="interpreter with open_clip_torch and transformers<4.56")
    p.add_argument("--arch", default="coca_ViT-B-32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5, help="timed greedy and training repetitions per side")
    p.add_argument("--beam-reps", type=int, default=3, help="timed beam-search repetitions per side")
    p.add_argument("--threads", default="2", help="torch threads on each side, or 'auto': what the vlm CLI "
                   "chooses for the machine as it is (vlm/runtime/threads.py)")
    p.add_argument("--busy", type=int, default=0, help="run beside this many `python -c 'while 1: pass'` processes")
    p.add_argument("--skip", nargs="*", default=[], choices=["greedy", "beam", "train"])
    p.add_argument("--json-out", default=None)
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
    from vlm.generation.config import GenerationConfig
    from vlm.generation.decode import generate
    from vlm.training.losses import CoCaLoss

    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    time.sleep(1.0 if busy else 0.0)
    load_start = os.getloadavg()[0]
    if args.threads == "auto":
        from vlm.runtime.threads import choose, usable_cpus

        args.threads = choose(usable_cpus(), load_start)
    args.threads = int(args.threads)
    _set_threads(args.threads)
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
        w = Worker(args.openclip_python, state_path, args.arch, args.threads)
        try:
            results = run(args, model, images, train_images, train_text, w, generate, GenerationConfig, CoCaLoss)
        finally:
            w.close()
            for pr in busy:
                pr.kill()
                pr.wait()
    results["busy_processes"] = args.busy
    results["load_average_start_end"] = [load_start, os.getloadavg()[0]]  # other jobs on the machine
    results["machine"] = machine()
    results["threads"] = args.threads
    results["versions"] = {"vlm_torch": torch.__version__, "worker": w.info}
    results["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    print(json.dumps(results, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def _stats(vlm_times, oc_times, tokens: int) -> dict:
    v, o = statistics.median(vlm_times), statistics.median(oc_times)
    return {"vlm_s": v, "open_clip_s": o, "vlm_tokens_per_s": tokens / v, "open_clip_tokens_per_s": tokens / o,
            "speedup": o / v, "vlm_all_s": vlm_times, "open_clip_all_s": oc_times}


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


def run(args, model, images, train_images, train_text, w, generate, GenerationConfig, CoCaLoss) -> dict:
    import copy

    import torch

    from vlm.generation.config import SpecialTokens
    from vlm.model.packed_linear import clear_cache

    res: dict = {"arch": args.arch, "batch": args.batch, "tokens": args.tokens, "reps": args.reps,
                 "beam_reps": args.beam_reps}
    n = args.tokens
    if "greedy" not in args.skip:
        gcfg = GenerationConfig(max_tokens=n, min_tokens=n)
        generate(model, images, SpecialTokens(SOT, EOT, PAD), GenerationConfig(max_tokens=4, min_tokens=4))  # warm-up
        w.ask(op="greedy", tokens=4)
        clear_cache(model)  # one cold call: weights packed inside the timing
        t0 = time.perf_counter()
        generate(model, images, SpecialTokens(SOT, EOT, PAD), gcfg)
        cold = time.perf_counter() - t0
        vt, ot = [], []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            ours = generate(model, images, SpecialTokens(SOT, EOT, PAD), gcfg)
            dt = time.perf_counter() - t0
            theirs = w.ask(op="greedy", tokens=n)
            vt.append(dt)
            ot.append(theirs["time"])
            print(f"greedy rep {rep}: vlm {dt:.2f}s open_clip {theirs['time']:.2f}s", file=sys.stderr)
        assert all(len(r) == n for r in ours) and all(len(r) == n for r in theirs["tokens"]), "lengths differ"
        same = [a[: n - 1] == b[: n - 1] for a, b in zip(ours, theirs["tokens"])]
        res["greedy"] = {**_stats(vt, ot, args.batch * n), "vlm_cold_s": cold,
                         "identical_first_n_minus_1": all(same),
                         "rows_identical": sum(same), "example_vlm": ours[0][:10], "example_open_clip":
                         theirs["tokens"][0][:10]}
        floor = memory_floor(model, images, n, args.reps)
        floor["max_speedup"] = res["greedy"]["open_clip_s"] / floor["floor_s"]
        floor["vlm_over_floor"] = res["greedy"]["vlm_s"] / floor["floor_s"]
        res["greedy"]["floor"] = floor
    if "beam" not in args.skip:
        bcfg = GenerationConfig(max_tokens=n, min_tokens=n, beams=args.beams)
        generate(model, images, SpecialTokens(SOT, EOT, PAD), GenerationConfig(max_tokens=4, min_tokens=4, beams=args.beams))
        w.ask(op="beam", tokens=4, beams=args.beams)  # warm-up
        vt, ot = [], []
        for rep in range(args.beam_reps):
            t0 = time.perf_counter()
            ours = generate(model, images, SpecialTokens(SOT, EOT, PAD), bcfg)
            dt = time.perf_counter() - t0
            theirs = w.ask(op="beam", tokens=n, beams=args.beams)
            vt.append(dt)
            ot.append(theirs["time"])
            print(f"beam rep {rep}: vlm {dt:.2f}s open_clip {theirs['time']:.2f}s", file=sys.stderr)
        res["beam"] = {**_stats(vt, ot, args.batch * n), "beams": args.beams,
                       "vlm_lengths": sorted({len(r) for r in ours}),
                       "open_clip_lengths": sorted({len([t for t in r if t != PAD]) for r in theirs["tokens"]})}
    if "train" not in args.skip:
        clear_cache(model)
        tm = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(tm.parameters(), lr=1e-5)
        loss_fn = CoCaLoss(contrastive_weight=1.0, caption_weight=2.0, pad_id=PAD)
        vt, ot, vl, ol = [], [], [], []
        for rep in range(args.reps + 1):
            t0 = time.perf_counter()
            parts = loss_fn(tm(train_images, train_text))
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            opt.step()
            dt = time.perf_counter() - t0
            theirs = w.ask(op="train")
            vl.append(float(parts["total"].detach()))
            ol.append(theirs["loss"])
            if rep:
                vt.append(dt)
                ot.append(theirs["time"])
            print(f"train rep {rep}: vlm {dt:.2f}s open_clip {theirs['time']:.2f}s "
                  f"loss {vl[-1]:.5f} / {ol[-1]:.5f}", file=sys.stderr)
        v, o = statistics.median(vt), statistics.median(ot)
        res["train"] = {"batch": args.train_batch, "vlm_s": v, "open_clip_s": o, "speedup": o / v,
                        "vlm_all_s": vt, "open_clip_all_s": ot, "vlm_losses": vl, "open_clip_losses": ol,
                        "first_loss_abs_diff": abs(vl[0] - ol[0])}
    return res


if __name__ == "__main__":
    sys.exit(main())
