"""Reduced precision against open_clip in float32: greedy captioning and image embedding, plus agreement.

CoCa at open_clip's ``coca_ViT-B-32`` with random, non-degenerate weights
(``tests/parity_weights.py: randomize_``), converted to vlm; vlm runs it at fp32, bf16 and int8
(``vlm.runtime.precision.to_precision``), open_clip in float32 in its own interpreter
(``--openclip-python``: open_clip's ``CoCa.generate`` needs transformers < 4.56; the worker of
``benchmarks/generate.py``). Interleaved (vlm fp32, bf16, int8, open_clip, ...), medians:

- greedy: B images x N tokens, the full length forced on both sides, with each precision's memory
  floor: encode + (N - 1) x the time to read the bytes one later step must read at that precision
  (weights of the text tower, decoder and LM head, and the cached image keys/values);
- image embedding: ``encode_image`` of E images;
- agreement to vlm fp32 on these random weights: image/text embedding cosine and next-token top-1
  agreement teacher-forced on fp32's greedy tokens. Random weights give nearly flat next-token
  distributions, so the token figure judges nothing about a trained model (docs/precision.md).

    python benchmarks/precision.py --openclip-python /work/venv-oc/bin/python --reps 3 \\
        [--busy 1] --json-out precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/generate.py, for both sides
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))  # parity_weights
sys.path.insert(0, str(HERE))  # generate: the open_clip worker; harness: the machine line

SOT, EOT, PAD = 49406, 49407, 0
PRECISIONS = ("fp32", "bf16", "int8")


def step_tensors(model, image_kv: list) -> list:
    """What one later decoding step reads, at the model's precision: every weight of the text
    tower, decoder and LM head (int8 linears as their int8 values) and the image keys/values."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    out = []
    for stack in (model.text.transformer, model.decoder):
        for name, m in stack.named_modules():
            if "kv_proj" in name:  # image keys/values: first step only
                continue
            if isinstance(m, QLinear):
                w, b = m._packed_params._weight_bias()
                out += [w.int_repr()] + ([b] if b is not None else [])
            else:
                out += [p.detach() for p in m.parameters(recurse=False)]
    return out + [t for t in image_kv if torch.is_tensor(t)]


def floor(model, x, tokens: int, reps: int) -> dict:
    """encode + first step, and (tokens - 1) x the time ``Tensor.sum`` takes over ``step_tensors``.
    For int8 the sum accumulates into int64 and is slower than the decoder itself: there
    ``bytes_per_step`` / the fp32 read rate is the meaningful floor (BENCHMARKS.md)."""
    import torch

    from vlm.generation.decode import _Stepper
    from vlm.model.packed_linear import packed_linears

    sot = torch.full((x.shape[0], 1), SOT, dtype=torch.long)
    enc, read = [], []
    with torch.inference_mode(), packed_linears([model.text.transformer, model.decoder], x.shape[0]):
        for _ in range(reps):
            t0 = time.perf_counter()
            step = _Stepper(model, model.visual(x).tokens)
            step(sot)
            enc.append(time.perf_counter() - t0)
        kv = [t for layer in step.dec_cache.layers[1::2] for t in (layer.k, layer.v)]
        tensors = step_tensors(model, kv)
        for _ in range(reps):
            t0 = time.perf_counter()
            for t in tensors:
                t.sum()
            read.append(time.perf_counter() - t0)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    e, r = statistics.median(enc), statistics.median(read)
    return {"encode_s": e, "read_per_step_s": r, "bytes_per_step": nbytes, "floor_s": e + (tokens - 1) * r}


def agreement(models: dict, images, text) -> dict:
    """Each reduced model against fp32: embedding cosines and teacher-forced top-1 agreement."""
    import torch
    import torch.nn.functional as F

    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.runtime.precision import input_dtype

    ref = models["fp32"]
    with torch.inference_mode():
        ids = generate(ref, images, SpecialTokens(SOT, EOT, PAD), GenerationConfig(max_tokens=20, min_tokens=20))
        forced = torch.full((images.shape[0], 22), PAD, dtype=torch.long)
        for i, row in enumerate(ids):
            forced[i, : len(row) + 2] = torch.tensor([SOT, *row, EOT])
        out_ref = ref(images, forced)
        res = {}
        for name, m in models.items():
            if name == "fp32":
                continue
            x = images.to(input_dtype(m))
            out = m(x, forced)
            keep = forced[:, 1:] != PAD
            same = (out.caption_logits.float().argmax(-1) == out_ref.caption_logits.argmax(-1))[keep]
            img_cos = F.cosine_similarity(m.encode_image(x).float(), ref.encode_image(images), dim=-1)
            txt_cos = F.cosine_similarity(m.encode_text(text).float(), ref.encode_text(text), dim=-1)
            res[name] = {"next_token_agreement": float(same.float().mean()), "tokens": int(keep.sum()),
                         "image_cosine_mean": float(img_cos.mean()), "image_cosine_min": float(img_cos.min()),
                         "text_cosine_mean": float(txt_cos.mean()), "text_cosine_min": float(txt_cos.min())}
        probs = out_ref.caption_logits.softmax(-1).amax(-1)[forced[:, 1:] != PAD]
        res["fp32_median_top1_probability"] = float(probs.median())
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openclip-python", default="/work/venv-oc/bin/python")
    p.add_argument("--arch", default="coca_ViT-B-32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--embed-batch", type=int, default=16, help="images per encode_image call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", type=int, default=0, help="run beside this many `python -c 'while 1: pass'` processes")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    import open_clip
    import torch
    from safetensors.torch import save_file

    from generate import Worker
    from harness import machine
    from parity_weights import randomize_
    from vlm.convert.open_clip import config_from_open_clip, from_open_clip_model
    from vlm.generation.config import GenerationConfig, SpecialTokens
    from vlm.generation.decode import generate
    from vlm.runtime.precision import input_dtype, to_precision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    oc_model = randomize_(open_clip.create_model(args.arch), seed=0, logit_gain=4.0).eval()
    cfg = config_from_open_clip(open_clip.get_model_config(args.arch))
    fp32 = from_open_clip_model(oc_model, cfg).eval()
    models = {name: to_precision(copy.deepcopy(fp32), name, torch.device("cpu")) for name in PRECISIONS}
    size = cfg.vision.image_size
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    embed_images = torch.randn(args.embed_batch, 3, size, size, generator=g)
    text = torch.randint(1, 49000, (args.batch, cfg.text.context_length), generator=g)
    text[:, 0], text[:, 20], text[:, 21:] = SOT, EOT, PAD
    res: dict = {"arch": args.arch, "batch": args.batch, "tokens": args.tokens, "embed_batch": args.embed_batch,
                 "reps": args.reps, "threads": args.threads, "busy_processes": args.busy}
    res["agreement"] = agreement(models, images, text)
    print(json.dumps(res["agreement"]), file=sys.stderr)
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    time.sleep(1.0 if busy else 0.0)
    load_start = os.getloadavg()[0]
    sp = SpecialTokens(SOT, EOT, PAD)
    gcfg = GenerationConfig(max_tokens=args.tokens, min_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
        state.update(__images__=images, __text__=text, __train_images__=embed_images, __train_text__=text.clone())
        save_file(state, os.path.join(tmp, "state.safetensors"))
        del state, oc_model
        w = Worker(args.openclip_python, os.path.join(tmp, "state.safetensors"), args.arch, args.threads)
        try:
            times = {k: [] for k in [*PRECISIONS, "open_clip"]}
            etimes = {k: [] for k in [*PRECISIONS, "open_clip"]}
            for name, m in models.items():  # warm-up
                generate(m, images.to(input_dtype(m)), sp, GenerationConfig(max_tokens=4, min_tokens=4))
            w.ask(op="greedy", tokens=4)
            w.ask(op="encode", batch=args.embed_batch)
            for rep in range(args.reps):
                for name, m in models.items():
                    x = images.to(input_dtype(m))
                    t0 = time.perf_counter()
                    generate(m, x, sp, gcfg)
                    times[name].append(time.perf_counter() - t0)
                    xe = embed_images.to(input_dtype(m))
                    with torch.inference_mode():
                        t0 = time.perf_counter()
                        m.encode_image(xe)
                        etimes[name].append(time.perf_counter() - t0)
                times["open_clip"].append(w.ask(op="greedy", tokens=args.tokens)["time"])
                etimes["open_clip"].append(w.ask(op="encode", batch=args.embed_batch)["time"])
                print(f"rep {rep}: greedy " + " ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
                      + " | embed " + " ".join(f"{k} {v[-1]:.2f}s" for k, v in etimes.items()),
                      file=sys.stderr)
            oc = statistics.median(times["open_clip"])
            oce = statistics.median(etimes["open_clip"])
            res["open_clip"] = {"greedy_s": oc, "embed_images_per_s": args.embed_batch / oce,
                                "greedy_all_s": times["open_clip"], "embed_all_s": etimes["open_clip"]}
            for name, m in models.items():
                t, e = statistics.median(times[name]), statistics.median(etimes[name])
                fl = floor(m, images.to(input_dtype(m)), args.tokens, args.reps)
                res[name] = {"greedy_s": t, "greedy_speedup": oc / t, "greedy_all_s": times[name],
                             "embed_images_per_s": args.embed_batch / e, "embed_speedup": oce / e,
                             "embed_all_s": etimes[name], "floor": fl, "max_speedup": oc / fl["floor_s"],
                             "over_floor": t / fl["floor_s"]}
        finally:
            w.close()
            for pr in busy:
                pr.kill()
                pr.wait()
    res["load_average_start_end"] = [load_start, os.getloadavg()[0]]
    res["machine"] = machine()
    res["versions"] = {"vlm_torch": torch.__version__, "worker": w.info}
    res["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])
    print(json.dumps(res, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
