"""open_clip's CoCa in its own interpreter, and the random CoCa that vlm and it both run.

open_clip 3.3's ``CoCa.generate`` needs transformers < 4.56, so the open_clip side of
``generate.py`` and ``precision.py`` runs in another environment (``--openclip-python``, e.g. a
venv with ``transformers==4.55.*``) as a worker process started by :func:`start`. Weights and
inputs travel in one safetensors file; commands and results as JSON lines on stdin / stdout.
The worker times its own calls, so a case returns ``w.ask(...)["time"]`` to the harness.

    oc_model, cfg, model = random_coca("coca_ViT-B-32")   # the same weights on both sides
    with start(python, "coca_ViT-B-32", oc_model, {"images": x}, threads=2) as w:
        w.ask(op="greedy", tokens=30)      # {"time": s, "tokens": [[...], ...]}

Ops: ``greedy`` / ``beam`` (``tokens``, ``beams``) on ``images``; ``encode`` (``batch``) on
``embed_images``; ``train`` (one AdamW step of ``CoCaLoss``) on ``train_images`` /
``train_text``, ``train_reset``; ``threads`` (``n``); ``quit``. Run as a script, this file is
the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

SOT, EOT, PAD = 49406, 49407, 0  # CLIP BPE start / end of text, and open_clip's pad id


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--openclip-python`` and ``--arch``: the worker's interpreter and the CoCa both sides run."""
    p.add_argument("--openclip-python", default="/work/venv-oc/bin/python",
                   help="interpreter with open_clip_torch and transformers<4.56")
    p.add_argument("--arch", default="coca_ViT-B-32", help="open_clip CoCa architecture (random weights)")


def random_coca(arch: str):
    """open_clip's ``arch`` with random non-degenerate weights (``tests/parity_weights.py``), its
    vlm config, and the same weights converted to vlm: ``(oc_model, cfg, model)``, both eval."""
    import open_clip
    import torch

    from harness import REPO
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model

    sys.path.insert(0, str(REPO / "tests"))  # parity_weights: a test helper
    from parity_weights import randomize_

    torch.manual_seed(0)
    oc_model = randomize_(open_clip.create_model(arch), seed=0, logit_gain=4.0).eval()
    cfg = config_from_open_clip(open_clip.get_model_config(arch))
    return oc_model, cfg, from_open_clip_model(oc_model, cfg).eval()


class Worker:
    """The client side: one worker process, asked one JSON command at a time."""

    def __init__(self, python: str, state: str, arch: str, threads: int):
        cmd = [python, os.path.abspath(__file__), "--state", state, "--arch", arch, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()  # versions on the worker's side

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
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def start(python: str, arch: str, oc_model, inputs: dict, threads: int = 1) -> Iterator[Worker]:
    """A worker holding ``oc_model``'s weights and the named input tensors; it ends with the block."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.safetensors")
        state = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
        state.update({f"__{k}__": v.contiguous() for k, v in inputs.items()})
        save_file(state, path)
        del state, oc_model  # the caller drops its own reference too: a second full-size model is GBs
        w = Worker(python, path, arch, threads)
        try:
            yield w
        finally:
            w.close()


# ------------------------------------------------------------------ the worker process


def serve(args) -> None:
    """Runs in the open_clip interpreter: answers {"op": ...} lines on stdin with JSON lines."""
    import copy

    import open_clip
    import torch
    from open_clip.loss import CoCaLoss
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    data = load_file(args.state)
    inputs = {k[2:-2]: data.pop(k) for k in list(data) if k.startswith("__")}
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
            torch.set_num_threads(int(cmd["n"]))
            reply({"threads": cmd["n"]})
        elif op == "train_reset":  # each --busy round trains afresh from the same weights, as vlm's side does
            train_model = opt = None
            reply({"train_reset": True})
        elif op in ("greedy", "beam"):
            n = cmd["tokens"]
            kw = dict(seq_len=n + 1, min_seq_len=n, sot_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD)
            if op == "greedy":
                kw.update(generation_type="top_k", top_k=1, fixed_output_length=True)
            else:
                kw.update(generation_type="beam_search", num_beams=cmd["beams"], num_beam_groups=1)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(inputs["images"], **kw)
            reply({"time": time.perf_counter() - t0, "tokens": out[:, 1:].tolist()})
        elif op == "encode":  # image embeddings of the first `batch` embed_images
            x = inputs["embed_images"][: cmd["batch"]]
            t0 = time.perf_counter()
            with torch.no_grad():
                emb = model.encode_image(x, normalize=True)
            reply({"time": time.perf_counter() - t0, "first": emb[0, :4].tolist()})
        elif op == "train":
            if train_model is None:
                train_model = copy.deepcopy(model).train()
                opt = torch.optim.AdamW(train_model.parameters(), lr=1e-5)
            t0 = time.perf_counter()
            out = train_model(inputs["train_images"], inputs["train_text"])
            losses = loss_fn(**out, output_dict=True)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            reply({"time": time.perf_counter() - t0, "loss": float(total.detach()),
                   "parts": {k: float(v.detach()) for k, v in losses.items()}})
        else:
            raise SystemExit(f"open_clip worker: unknown op {op!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the open_clip worker (started by openclip_worker.start)")
    ap.add_argument("--state", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--threads", type=int, default=1)
    serve(ap.parse_args())
