"""Where one later bf16 decoding step spends its time, and what the image attention could cost.

Two measurements on coca_ViT-B-32 at random weights in bfloat16 (``--precision bf16``), B rows:

- ``profile``: 5 later decoding steps (after 12 warm ones) under ``torch.profiler``, ops grouped
  by input shape: milliseconds a step, calls a step, microseconds a call (a product's read rate
  is its weight's bytes over that time);
- ``attention``: the image cross-attention's two products alone, over 12 layers' cached
  keys/values (evicting each other from cache as a step does), in bfloat16 as vlm runs them
  and with float32 keys/values, interleaved round by round, medians.

    python benchmarks/bf16_step.py --threads 2 --rounds 11
"""

from __future__ import annotations

import argparse
import statistics
import time


def profile(torch, rows: int) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from vlm.generation.decode import _Stepper
    from vlm.model.coca import create_model
    from vlm.model.packed_linear import packed_linears
    from vlm.runtime.precision import to_precision

    model = to_precision(create_model("coca_ViT-B-32").eval(), "bf16", torch.device("cpu"))
    images = torch.randn(rows, 3, 224, 224).to(torch.bfloat16)
    with torch.inference_mode(), packed_linears([model.text.transformer, model.decoder], rows):
        step = _Stepper(model, model.visual(images).tokens)
        ids = torch.full((rows, 1), 49406)
        for _ in range(12):
            step(ids)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(5):
                step(ids)
    out = []
    for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total,
                    reverse=True)[:14]:
        per_call_us = e.self_cpu_time_total / e.count
        out.append({"op": e.key, "shapes": str(e.input_shapes)[:90], "calls_per_step": e.count / 5,
                    "us_per_call": round(per_call_us, 1), "ms_per_step": round(e.self_cpu_time_total / 5e3, 2)})
    return out


def attention(torch, rows: int, rounds: int) -> dict:
    B, heads, hs, N, layers = rows, 8, 64, 255, 12  # coca_ViT-B-32's decoder over 255 image tokens
    k16 = [torch.randn(B * heads, N, hs).bfloat16() for _ in range(layers)]
    v16 = [torch.randn(B * heads, N, hs).bfloat16() for _ in range(layers)]
    k32, v32 = [k.float() for k in k16], [v.float() for v in v16]
    q = torch.randn(B * heads, 1, hs).bfloat16()
    p = torch.randn(B * heads, 1, N).softmax(-1).bfloat16()
    cases = {
        "q.K^T bf16": lambda i: torch.bmm(q, k16[i].transpose(1, 2)),  # as vlm runs it
        "q.K^T fp32": lambda i: torch.bmm(q.float(), k32[i].transpose(1, 2)),
        "P.V bf16": lambda i: torch.bmm(p, v16[i]),
        "P.V fp32": lambda i: torch.bmm(p.float(), v32[i]),
    }
    times: dict = {name: [] for name in cases}
    for _ in range(rounds):
        for name, f in cases.items():
            for i in range(layers):  # warm
                f(i)
            t0 = time.perf_counter()
            for _ in range(5):
                for i in range(layers):
                    f(i)
            times[name].append((time.perf_counter() - t0) / (5 * layers) * 1e6)
    mb = {"bf16": B * heads * N * hs * 2 / 1e6, "fp32": B * heads * N * hs * 4 / 1e6}
    out = {}
    for name, t in times.items():
        us = statistics.median(t)
        size = mb[name.split()[-1]]
        out[name] = {"us_per_layer": round(us), "MB_read": round(size, 2), "GB_per_s": round(size / us * 1e3, 1)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=8, help="images decoded together")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds of the attention products")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for row in profile(torch, args.rows):
        print(f"{row['ms_per_step']:6.2f} ms/step  {row['calls_per_step']:4.0f} x {row['us_per_call']:7.1f} us  "
              f"{row['op'][:32]:32s} {row['shapes']}")
    for name, row in attention(torch, args.rows, args.rounds).items():
        print(f"{name:12s} {row['us_per_layer']:5d} us a layer, {row['MB_read']} MB, {row['GB_per_s']} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
