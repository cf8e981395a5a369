"""A one-shot GPU check of vlm (issue 20): one command, one JSON file, at most 8 minutes on an H100/H200.

    python scripts/gpu_check.py --out gpu_check.json                       # on the GPU machine
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check.json  # the same code on a CPU, in seconds

What it measures, each section on its own (a failing section records its one-line error and the
next one runs; the JSON is rewritten after every section, so a run cut short keeps what it had):

- ``train``: one training step (forward, CoCa loss, backward, AdamW) of coca_ViT-B-32 under bf16
  autocast, vlm against open_clip's own model and ``CoCaLoss`` on the same batch and the same
  weights (converted with ``vlm.convert.open_clip``), interleaved; samples/s, model FLOPs
  utilisation (MFU, below), peak memory, first-step losses of both. Targets (issue 20): vlm at
  least 1.3x open_clip's samples/s and 45% MFU;
- ``fsdp``: ``vlm train`` on the micro recipe (configs/micro.yaml, shapes scenes) with DDP, with
  ``fsdp=true``, and with ``fsdp=true`` stopped half-way and resumed: the three loss curves, the
  export of the FSDP run loaded with ``vlm.load``, time per step and peak memory. Accelerate
  1.16 runs FSDP on GPUs only: on a CPU the FSDP runs record vlm's one-line refusal;
- ``caption``: greedy captioning, B images x N tokens (full length forced on both sides), vlm's
  ``generate`` against open_clip's ``CoCa.generate`` (top-k 1), tokens/s and peak memory;
- ``index``: ``vlm index --json`` over generated shapes images with the converted model,
  images/s as the command reports it, peak memory;
- ``compiled`` (only when named in ``--sections``: minutes of compiling): vlm's training step
  under ``torch.compile`` beside the eager one.

``--profile`` adds one profiled training step per side (the GPU's kernel time against the step's
wall time, and the ten ops that take longest). ``--openclip-python PY`` times open_clip's
``generate`` in the interpreter PY where this one's transformers is too new for it.

MFU = (training FLOPs per sample x samples/s) / peak. Training FLOPs per sample =
3 x forward (backward = 2 x forward), counting matrix products only (2 FLOPs per multiply-add;
``train_flops_per_sample``): for a transformer block over T tokens of width d with MLP width h,
2T(4d^2 + 2dh) + 4T^2 d (projections, MLP, QK^T and AV over all T^2 pairs, causal or not);
plus the patch embedding, the attentional pooler, the decoder's cross-attention over the image
tokens, the LM head over the vocabulary and the B x B contrastive logits. Norms, softmax and
embeddings lookups are not counted. Against ``torch.utils.flop_counter.FlopCounterMode`` over one
vlm training step the count is 2.9% higher on coca_ViT-B-32 and 0.7% at tiny widths (measured;
tests/test_gpu_check.py checks the tiny one). The peak is bf16 dense tensor-core throughput: 989 TFLOP/s
on H100/H200 SXM (NVIDIA's data sheet, without sparsity); ``--peak-tflops`` sets another; on a
CPU none is assumed and MFU is null.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` per section (reset before it; in ``train``
per side, with both models and their optimizer states resident, and ``step_memory_bytes``, what
the step adds on top) and per ``vlm train`` process; on a CPU the process's peak resident set so far (``ru_maxrss``), which
only grows from section to section.

Set-up on the GPU machine (its own Python; open_clip 3.3's ``CoCa.generate`` needs
transformers < 4.56, and whatever is missing is reported in the JSON, never a crash):

    pip install -e ".[test]" open_clip_torch==3.3.0 "transformers>=4.40,<4.56"
    python scripts/gpu_check.py --out gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # parity_weights (randomize_, shrink_open_clip_cfg): test helpers
SOT, EOT, PAD = 49406, 49407, 0
ARCH = "coca_ViT-B-32"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s, SXM data sheets


# --------------------------------------------------------------------------------- FLOPs


def _block(T: int, d: int, h: int) -> int:
    """Forward FLOPs of one pre-norm transformer block over T tokens: qkv + out, MLP, attention."""
    return 2 * T * (4 * d * d + 2 * d * h) + 4 * T * T * d


def train_flops_per_sample(cfg, text_len: int, batch: int) -> int:
    """Training FLOPs per image-caption pair of a vlm CoCa (see the module docstring): 3 x forward."""
    v, t, dec, e = cfg.vision, cfg.text, cfg.decoder, cfg.embed_dim
    g = v.image_size // v.patch_size
    tv = g * g + (1 if v.cls_token else 0)
    f = 2 * g * g * 3 * v.patch_size ** 2 * v.width  # patch embedding (a strided convolution)
    f += v.layers * _block(tv, v.width, int(v.width * v.mlp_ratio))
    if v.pool == "attn":  # the attentional pooler: n queries of width e over the tv image tokens
        q = v.attn_pool_queries
        f += 2 * q * e * e * 2 + 2 * tv * v.width * 2 * e + 4 * q * tv * e
        image_tokens, image_dim = q - 1, e
        f += 2 * e * e  # projection of the pooled token
    else:
        image_tokens, image_dim = tv - (1 if v.cls_token else 0), v.width
        f += 2 * v.width * e
    tt = text_len + (1 if t.pool == "cls" else 0)
    f += t.layers * _block(tt, t.width, int(t.width * t.mlp_ratio)) + 2 * t.width * e
    if dec is not None:
        td, w, h = text_len - 1, dec.width, int(dec.width * dec.mlp_ratio)
        cross = 2 * td * w * w * 2 + 2 * image_tokens * image_dim * 2 * w + 4 * td * image_tokens * w \
            + 2 * td * 2 * w * h
        f += dec.layers * (_block(td, w, h) + cross) + 2 * td * w * dec.vocab_size
    f += 2 * batch * e * 2  # the B x B logits, both directions
    return 3 * f


# ---------------------------------------------------------------------------------- setup


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def peak_memory(torch, device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device)}
    return {"peak_rss_bytes_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def reset_memory(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(torch, device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "load_average": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    for name in ("accelerate", "transformers", "open_clip"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # a missing or broken package: said, not fatal
            info[name] = f"unavailable ({first_line(e)})"
    return info


def build_models(torch, tiny: bool, arch: str = ARCH):
    """(vlm model, open_clip model or None, why-not, vlm config): the same weights on both sides."""
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from vlm.model.coca import create_model
    from vlm.model.config import get_config

    try:
        import open_clip
        from parity_weights import randomize_, shrink_open_clip_cfg

        oc_cfg = open_clip.get_model_config(arch)
        if tiny:
            oc_cfg = shrink_open_clip_cfg(oc_cfg)
        kwargs = {k: v for k, v in oc_cfg.items() if k != "custom_text"}
        oc = randomize_(open_clip.CoCa(**kwargs), seed=0, logit_gain=4.0)
        oc.init_kwargs = kwargs  # to build it again in another interpreter (--openclip-python)
        cfg = config_from_open_clip(oc_cfg)
        return from_open_clip_model(oc, cfg), oc, None, cfg
    except Exception as e:  # open_clip missing or incompatible: vlm alone, at the same architecture
        torch.manual_seed(0)
        cfg = get_config("tiny" if tiny else arch)
        return create_model(cfg), None, first_line(e), cfg


def batch(torch, cfg, n: int, device, seed: int = 1):
    """n random images and n random captions of varied lengths (SOT ... EOT, then padding)."""
    g = torch.Generator().manual_seed(seed)
    size, L = cfg.vision.image_size, cfg.text.context_length
    images = torch.randn(n, 3, size, size, generator=g)
    text = torch.randint(1, 49000, (n, L), generator=g)
    text[:, 0] = SOT
    for i in range(n):
        k = 4 + (i * 5) % max(1, L - 6)
        text[i, k] = EOT
        text[i, k + 1:] = PAD
    return images.to(device), text.to(device)


# -------------------------------------------------------------------------------- sections


def _vlm_side(ctx, images, text, compiled: bool = False):
    """(model, step) of vlm: forward under bf16 autocast, CoCa loss, backward; compiled with
    ``torch.compile`` (what ``accelerate launch --dynamo_backend inductor`` does) when asked."""
    import copy

    torch = ctx["torch"]
    from vlm.training.losses import CoCaLoss

    model = copy.deepcopy(ctx["vlm"]).to(ctx["device"]).train()
    loss_fn = CoCaLoss(contrastive_weight=1.0, caption_weight=2.0, pad_id=PAD)
    forward = torch.compile(model) if compiled else model
    amp = dict(device_type=ctx["device"].type, dtype=torch.bfloat16)

    def step():
        with torch.autocast(**amp):
            parts = loss_fn(forward(images, text))
        parts["total"].backward()
        return parts["total"]

    return model, step


def _openclip_side(ctx, images, text):
    import copy

    torch = ctx["torch"]
    from open_clip.loss import CoCaLoss as OpenClipCoCaLoss

    model = copy.deepcopy(ctx["open_clip"]).to(ctx["device"]).train()
    loss_fn = OpenClipCoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=PAD)
    amp = dict(device_type=ctx["device"].type, dtype=torch.bfloat16)

    def step():
        with torch.autocast(**amp):
            total = sum(loss_fn(**model(images, text), output_dict=True).values())
        total.backward()
        return total

    return model, step


def _time_training(ctx, sides: dict, out: dict, warmup: int = 2) -> None:
    """Interleaved training steps (AdamW included) of every side: samples/s, MFU, memory, first loss."""
    torch, device, args = ctx["torch"], ctx["device"], ctx["args"]
    # each side's own trainer's AdamW: vlm train fuses it on a GPU (vlm.training.optim), open_clip's
    # training script keeps PyTorch's default (multi-tensor)
    fused = {k: device.type == "cuda" and k.startswith("vlm") for k in sides}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=fused[k] or None) for k, (m, _) in sides.items()}
    times = {k: [] for k in sides}
    for rep in range(args.steps + warmup):  # warm-up steps (compilation, allocator), then timed ones
        for name, (model, step) in sides.items():
            reset_memory(torch, device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            t0 = time.perf_counter()
            loss = step()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            sync(torch, device)
            dt = time.perf_counter() - t0
            if rep == 0:
                out.setdefault(name, {}).update(first_loss=float(loss.detach()), first_step_s=dt)
            elif rep >= warmup:
                times[name].append(dt)
            if rep == args.steps + warmup - 1:  # the last timed step: its peak (every side is resident)
                out[name].update(peak_memory(torch, device))
                if before is not None:  # what the step itself adds: activations, gradients
                    out[name]["step_memory_bytes"] = out[name]["peak_memory_bytes"] - before
    flops = out["flops_per_sample"]
    for name in sides:
        s = args.train_batch / statistics.median(times[name])
        out[name].update(samples_per_s=s, step_s=times[name],
                         mfu=flops * s / ctx["peak"] if ctx["peak"] else None,
                         optimizer="AdamW, fused" if fused[name] else "AdamW, PyTorch's default")
    if args.profile:
        for name, (_, step) in sides.items():
            prof = out[name]["profile"] = _profile(ctx, step, opts[name])
            if ctx["peak"] and prof["products_s"]:  # the step's products alone, at the speed they ran
                prof["mfu_products_only"] = flops * args.train_batch / (prof["products_s"] * ctx["peak"])


PRODUCT_OPS = re.compile(r"aten::(mm|addmm|bmm|baddbmm)$|attention|convolution")  # the counted FLOPs' ops


def _profile(ctx, step, opt) -> dict:
    """One profiled training step: the device's busy time (its kernels) against the step's wall time
    (a device idle between kernels is waiting for the host), the ten ops that take it longest, and
    the fifteen longest op-and-input-shape pairs (which copy, which norm); ``products_s``, the
    device time of the matrix products, attention and convolutions (the FLOPs MFU counts)."""
    torch, device = ctx["torch"], ctx["device"]
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(torch, device)
    t0 = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(torch, device)
    wall = time.perf_counter() - t0
    from torch.autograd import DeviceType

    events = prof.key_averages()
    if device.type == "cuda":  # an op's device time is its kernels' time: count the kernels alone
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        ops = [e for e in events if e.device_type == DeviceType.CPU]
        attr = "self_device_time_total"
    else:
        kernels = ops = list(events)
        attr = "self_cpu_time_total"
    ops = sorted(ops, key=lambda e: getattr(e, attr), reverse=True)
    cpu_side = DeviceType.CPU if device.type == "cuda" else None
    shaped = sorted((e for e in prof.key_averages(group_by_input_shape=True)
                     if cpu_side is None or e.device_type == cpu_side), key=lambda e: getattr(e, attr), reverse=True)
    products = sum(getattr(e, attr) for e in ops if PRODUCT_OPS.search(e.key)) / 1e6
    return {"wall_s": wall, "device_busy_s": sum(getattr(e, attr) for e in kernels) / 1e6,
            "kernels": sum(e.count for e in kernels), "products_s": products,
            "top": [{"op": e.key[:80], "s": getattr(e, attr) / 1e6, "calls": e.count} for e in ops[:10]],
            "top_by_shape": [{"op": e.key[:60], "shapes": str(e.input_shapes)[:120], "s": getattr(e, attr) / 1e6,
                              "calls": e.count} for e in shaped[:15]]}


def section_train(ctx) -> dict:
    torch, device, args = ctx["torch"], ctx["device"], ctx["args"]
    images, text = batch(torch, ctx["cfg"], args.train_batch, device)
    out = {"batch": args.train_batch, "dtype": "bf16 autocast", "steps_timed": args.steps,
           "flops_per_sample": train_flops_per_sample(ctx["cfg"], text.shape[1], args.train_batch),
           "peak_flops": ctx["peak"]}
    sides = {"vlm": _vlm_side(ctx, images, text)}
    if ctx["open_clip"] is not None:
        sides["open_clip"] = _openclip_side(ctx, images, text)
    else:
        out["open_clip"] = f"not measured: {ctx['open_clip_missing']}"
    _time_training(ctx, sides, out)
    if "open_clip" in sides:
        out["speedup"] = out["vlm"]["samples_per_s"] / out["open_clip"]["samples_per_s"]
        out["first_loss_abs_diff"] = abs(out["vlm"]["first_loss"] - out["open_clip"]["first_loss"])
    return out


def section_compiled(ctx) -> dict:
    """vlm's training step under ``torch.compile`` (default mode), beside the eager one."""
    torch, args = ctx["torch"], ctx["args"]
    images, text = batch(torch, ctx["cfg"], args.train_batch, ctx["device"])
    out = {"batch": args.train_batch, "dtype": "bf16 autocast", "steps_timed": args.steps,
           "flops_per_sample": train_flops_per_sample(ctx["cfg"], text.shape[1], args.train_batch),
           "peak_flops": ctx["peak"]}
    sides = {"vlm_compiled": _vlm_side(ctx, images, text, compiled=True), "vlm": _vlm_side(ctx, images, text)}
    _time_training(ctx, sides, out, warmup=3)
    out["speedup_compiled_vs_eager"] = out["vlm_compiled"]["samples_per_s"] / out["vlm"]["samples_per_s"]
    return out


def section_caption(ctx) -> dict:
    torch, device, args = ctx["torch"], ctx["device"], ctx["args"]
    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate

    n, tokens = args.caption_batch, args.tokens
    images, _ = batch(torch, ctx["cfg"], n, device, seed=2)
    model = ctx["vlm"].to(device).eval()
    special = SpecialTokens(SOT, EOT, PAD)
    gcfg = GenerationConfig(max_tokens=tokens, min_tokens=tokens)
    runs = {"vlm": lambda: generate(model, images, special, gcfg)}
    out: dict = {"batch": n, "tokens": tokens, "dtype": "float32"}
    if ctx["open_clip"] is not None:
        oc = ctx["open_clip"].to(device).eval()
        kw = dict(seq_len=tokens + 1, min_seq_len=tokens, sot_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD,
                  generation_type="top_k", top_k=1, fixed_output_length=True)
        try:
            with torch.no_grad():
                oc.generate(images[:1], **{**kw, "seq_len": 3, "min_seq_len": 2})
            runs["open_clip"] = lambda: oc.generate(images, **kw)
        except Exception as e:  # e.g. transformers >= 4.56 (open_clip 3.3's generate needs < 4.56)
            out["open_clip"] = f"not measured: {first_line(e)}"
            if args.openclip_python:  # its own interpreter, where transformers < 4.56 is installed
                out["open_clip"] = openclip_generate(ctx, oc, images, kw)
    else:
        out["open_clip"] = f"not measured: {ctx['open_clip_missing']}"
    times = {k: [] for k in runs}
    with torch.no_grad():
        for name, run in runs.items():
            run()  # warm-up
        for rep in range(args.reps):
            for name, run in runs.items():
                reset_memory(torch, device)
                t0 = time.perf_counter()
                run()
                sync(torch, device)
                times[name].append(time.perf_counter() - t0)
                if rep == args.reps - 1:
                    out[name] = peak_memory(torch, device)
    for name in runs:
        out[name].update(tokens_per_s=n * tokens / statistics.median(times[name]), seconds=times[name])
    if isinstance(out.get("open_clip"), dict) and "seconds" in out["open_clip"]:
        out["open_clip"]["tokens_per_s"] = n * tokens / statistics.median(out["open_clip"]["seconds"])
        out["speedup"] = out["vlm"]["tokens_per_s"] / out["open_clip"]["tokens_per_s"]
    return out


OPENCLIP_GENERATE = """
import json, sys, time
import open_clip, torch, transformers
from safetensors.torch import load_file
a = json.loads(sys.argv[1])
state = load_file(a["state"])
images = state.pop("__images__").to(a["device"])
model = open_clip.CoCa(**a["kwargs"])
model.load_state_dict(state)
model = model.to(a["device"]).eval()
sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
times = []
with torch.no_grad():
    model.generate(images, **a["generate"])  # warm-up
    for _ in range(a["reps"]):
        if images.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        model.generate(images, **a["generate"])
        sync()
        times.append(time.perf_counter() - t0)
peak = torch.cuda.max_memory_allocated() if images.is_cuda else None
print(json.dumps({"seconds": times, "peak_memory_bytes": peak, "transformers": transformers.__version__,
                  "process": "its own (--openclip-python), before vlm's runs"}))
"""


def openclip_generate(ctx, oc, images, kw) -> dict | str:
    """open_clip's ``CoCa.generate`` timed in ``--openclip-python`` (the same weights and images,
    through a safetensors file): ``{"seconds": [...], ...}``, or why not in one line."""
    from safetensors.torch import save_file

    torch, args = ctx["torch"], ctx["args"]
    path = ctx["work"] / "openclip_generate.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in oc.state_dict().items()}
    save_file({**state, "__images__": images.cpu().contiguous()}, str(path))
    job = {"state": str(path), "device": str(ctx["device"]), "kwargs": oc.init_kwargs, "generate": kw,
           "reps": args.reps}
    env = {**os.environ, "PYTHONPATH": repo_first(os.environ)}
    ctx["vlm"].cpu()  # the GPU's memory to the other process while it runs
    oc.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        r = subprocess.run([args.openclip_python, "-c", OPENCLIP_GENERATE, json.dumps(job)], env=env,
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not measured: --openclip-python {args.openclip_python}: {first_line(e)}"
    finally:
        ctx["vlm"].to(ctx["device"])
    if r.returncode != 0:
        return f"not measured: --openclip-python {args.openclip_python}: {failure_line(r.stderr)}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def section_index(ctx) -> dict:
    torch, device, args = ctx["torch"], ctx["device"], ctx["args"]
    from vlm.cli.main import main as vlm_main
    from vlm.data.shapes_dir import generate_shapes
    from vlm.io.checkpoint import save_pretrained
    from vlm.tokenizers.clip_bpe import CLIPBPETokenizer

    work = ctx["work"]
    model_dir = work / "model"
    if not model_dir.exists():
        save_pretrained(ctx["vlm"].cpu(), model_dir,
                        tokenizer=CLIPBPETokenizer(context_length=ctx["cfg"].text.context_length))
    data = generate_shapes(work / "index_images", args.index_images, seed=4)
    reset_memory(torch, device)
    buf = io.StringIO()
    argv = ["index", str(data / "images"), "--out", str(work / "index"), "--model", str(model_dir),
            "--device", device.type, "--batch-size", str(args.index_batch), "--json"]
    with contextlib.redirect_stdout(buf):
        code = vlm_main(argv)
    if code != 0:
        raise RuntimeError(f"vlm index exited {code}: {buf.getvalue()[-500:]}")
    report = json.loads([line for line in buf.getvalue().splitlines() if line.startswith("{")][-1])
    return {"command": "vlm " + " ".join(argv), "images": args.index_images,
            "images_per_s": report["images_per_second"], "report": report, **peak_memory(torch, device)}


DRIVER = """
import json, os, resource, sys, time
import torch
from vlm.training.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \\
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# one file per process: lines that several processes print to one pipe can interleave
with open(os.environ["GPU_CHECK_REPORT"] + "." + os.environ.get("RANK", "0"), "w") as fh:
    json.dump({"code": code, "seconds": time.perf_counter() - t, "peak_memory_bytes": peak}, fh)
sys.exit(code)
"""


def repo_first(environ) -> str:
    """``PYTHONPATH`` for a child process: the repository, then the caller's own entries (where
    packages installed beside the repository live, ``pip install --target DIR``)."""
    return os.pathsep.join(p for p in [str(ROOT), environ.get("PYTHONPATH", "")] if p)


def train_env(environ, report: Path, cpu: bool) -> dict:
    """The environment of a launched ``vlm train``: the caller's own, the repository first on the path."""
    env = {**environ, "PYTHONPATH": repo_first(environ), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "GPU_CHECK_REPORT": str(report)}
    env.pop("ACCELERATE_USE_FSDP", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$")


def failure_line(stderr: str) -> str:
    """The line that says why a launched run failed: vlm's own one-line error (``...: error: ...``),
    else the first exception line of a traceback (not the launcher's ``CalledProcessError`` about its
    child), else the end of stderr."""
    lines = stderr.splitlines()
    said = [line for line in lines if ": error: " in line]
    if said:
        return said[-1]
    raised = [m.group(1) for m in map(EXCEPTION_LINE.match, lines) if m]
    raised = [line for line in raised if not line.startswith(("subprocess.CalledProcessError",
                                                             "torch.distributed.elastic"))]
    return raised[-1] if raised else stderr[-500:]  # the last: "During handling of ..." comes before it


def _train_run(ctx, name: str, extra: list[str]) -> dict:
    """One ``vlm train`` run on the micro recipe, launched as users launch it (torchrun via Accelerate)."""
    import socket

    args, work = ctx["args"], ctx["work"]
    with socket.socket() as s:  # a free rendezvous port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = work / "train_driver.py"
    driver.write_text(DRIVER)
    report = work / f"{name}-{time.monotonic_ns()}.report"
    env = train_env(os.environ, report, cpu=ctx["device"].type == "cpu")
    procs = args.fsdp_processes
    # Accelerate refuses --multi_gpu with one process; one GPU's FSDP run is launched with --use_fsdp instead
    mode = ["--multi_gpu"] if procs > 1 else (["--use_fsdp"] if "fsdp=true" in extra else [])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(procs),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(driver), "--config", str(ROOT / "configs" / "micro.yaml"),
           f"data.root={ctx['shapes']}", f"output_dir={work / name}", f"steps={args.fsdp_steps}",
           "data.batch_size=8", "lr=3e-3", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ranks = [json.loads(p.read_text()) for p in sorted(work.glob(report.name + ".*"))]
    out = {"exit": r.returncode, "wall_s": time.perf_counter() - t0,
           "peak_memory_bytes": max((p["peak_memory_bytes"] for p in ranks), default=None)}
    said = [line for line in r.stdout.splitlines() if " process" in line and "device" in line]
    out["launch"] = said[0] if said else None
    if r.returncode != 0:
        out["error"] = failure_line(r.stderr)
        out["stderr_tail"] = r.stderr[-4000:]  # the traceback, where there is one
    log = work / name / "losses.jsonl"
    if log.is_file():
        rows = sorted(map(json.loads, log.read_text().splitlines()), key=lambda row: row["step"])
        out["losses"] = [row["total"] for row in rows]
    return out


def section_fsdp(ctx) -> dict:
    from vlm.data.shapes_dir import generate_shapes

    args, work = ctx["args"], ctx["work"]
    ctx["shapes"] = generate_shapes(work / "fsdp_shapes", 16 * args.fsdp_processes * 4, seed=5)
    half = max(1, args.fsdp_steps // 2)
    runs = {"ddp": _train_run(ctx, "ddp", []), "fsdp": _train_run(ctx, "fsdp", ["fsdp=true"])}
    out: dict = {"recipe": "configs/micro.yaml", "processes": args.fsdp_processes, "steps": args.fsdp_steps,
                 **runs}
    if runs["fsdp"]["exit"] != 0:
        return out  # refused (CPU) or failed: the line is in out["fsdp"]["error"]
    part = _train_run(ctx, "part", ["fsdp=true", f"stop_after={half}"])
    resumed = _train_run(ctx, "part", ["fsdp=true", "resume=latest"])
    out.update(stopped=part, resumed=resumed)
    a, b, c = runs["ddp"].get("losses"), runs["fsdp"].get("losses"), resumed.get("losses")
    if a and b:
        out["max_abs_loss_diff_fsdp_vs_ddp"] = max(abs(x - y) for x, y in zip(a, b))
    if b and c:
        out["max_abs_loss_diff_resumed_vs_fsdp"] = max(abs(x - y) for x, y in zip(b, c))
    import vlm

    pipe = vlm.load(str(work / "fsdp" / "model"), device="cpu")
    out["export_loads"] = sum(p.numel() for p in pipe.model.parameters())
    return out


SECTIONS = {"train": section_train, "fsdp": section_fsdp, "caption": section_caption, "index": section_index,
            "compiled": section_compiled}


# ------------------------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON file written (after every section)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny widths and sizes: the code path in seconds")
    p.add_argument("--sections", nargs="*", default=["train", "fsdp", "caption", "index"], choices=list(SECTIONS),
                   help="compiled (vlm's step under torch.compile) is asked for by name: minutes of compiling")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s for MFU")
    p.add_argument("--budget-s", type=float, default=420, help="sections not started by then are skipped")
    p.add_argument("--profile", action="store_true", help="profile one training step of each side")
    p.add_argument("--arch", default=ARCH, help="the open_clip CoCa architecture built (fsdp trains configs/micro.yaml)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 256; --tiny 4)")
    p.add_argument("--openclip-python", default=None,
                   help="an interpreter with transformers < 4.56 for open_clip's generate, where this one's is newer")
    args = p.parse_args(argv)
    big = not args.tiny
    args.train_batch = args.train_batch or (256 if big else 4)
    args.steps = 10 if big else 2
    args.caption_batch, args.tokens, args.reps = (32, 30, 3) if big else (2, 4, 1)
    args.index_images, args.index_batch = (2048, 256) if big else (8, 4)
    args.fsdp_steps, args.fsdp_processes = (8 if big else 2), 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        args.fsdp_processes = 2  # gloo processes (where FSDP is refused, the DDP run still runs)
    results: dict = {"command": " ".join(["python", "scripts/gpu_check.py", *(argv or sys.argv[1:])]),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "environment": environment(torch, device)}
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    results["peak_flops"] = peak
    out = Path(args.out)

    def write():
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, out)

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = {"torch": torch, "device": device, "args": args, "peak": peak, "work": Path(tmp)}
        ctx["vlm"], ctx["open_clip"], ctx["open_clip_missing"], ctx["cfg"] = build_models(torch, args.tiny, args.arch)
        results["model"] = {"arch": args.arch + (" (tiny widths)" if args.tiny else ""),
                            "parameters": sum(p.numel() for p in ctx["vlm"].parameters()),
                            "open_clip": "same weights" if ctx["open_clip"] is not None
                            else f"unavailable: {ctx['open_clip_missing']}"}
        for name in args.sections:
            t0 = time.perf_counter()
            if t0 - t_all > args.budget_s:
                results[name] = {"skipped": f"out of time (--budget-s {args.budget_s:g})", "section_s": 0.0}
                write()
                continue
            try:
                results[name] = SECTIONS[name](ctx)
            except Exception as e:  # one section's failure is a finding, not the end of the check
                results[name] = {"error": first_line(e)}
            results[name]["section_s"] = time.perf_counter() - t0
            write()
            print(f"gpu_check: {name} done in {results[name]['section_s']:.1f}s", file=sys.stderr)
    results["total_s"] = time.perf_counter() - t_all
    write()
    print(f"gpu_check: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
