"""The memory floor of cached greedy decoding: a lower bound for any decoder, on this machine as it is.

The image tower and the first step (which computes the image keys/values of every
cross-attention layer) are timed as vlm runs them: dense matrix products, compute-bound.
Every later step must read each weight matrix of the text tower, the decoder and the LM head
once, and the cached image keys/values, for a handful of rows: memory-bound. That step is
bounded below by the time it takes merely to read those bytes (``_read``: the maximum of each
tensor's bytes taken as int32, whatever its dtype), at the model's precision.
``floor = encode + (tokens - 1) x read``. Used by ``generate.py`` (float32) and ``precision.py``
(fp32, bf16, int8).
"""

from __future__ import annotations

import statistics
import time


def step_tensors(model, image_kv: list) -> list:
    """What one later decoding step reads, at the model's precision: every weight of the text
    tower, decoder and LM head (int8 linears as their int8 values; a ``RescoredHead`` as its
    reduced copy, the few float32 rows it gathers left out) and the image keys/values."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from vlm.runtime.rescored_head import RescoredHead

    out = []
    for stack in (model.text.transformer, model.decoder):
        for name, m in stack.named_modules():
            if "kv_proj" in name:  # image keys/values: first step only
                continue
            if isinstance(m, RescoredHead):  # its reduced copy (m.approx) is read whole, not these
                continue
            if isinstance(m, QLinear):
                w, b = m._packed_params._weight_bias()
                out += [w.int_repr()] + ([b] if b is not None else [])
            else:
                out += [p.detach() for p in m.parameters(recurse=False)]
    return out + [t for t in image_kv if torch.is_tensor(t)]


def memory_floor(model, images, tokens: int, reps: int, sot: int) -> dict:
    """Medians over ``reps`` of encode + first step, and of one read of ``step_tensors``.

    ``images`` at the model's input dtype; ``sot``: the start-of-text id every row begins with.
    """
    import torch

    from vlm.generation.decode import _Stepper
    from vlm.model.packed_linear import packed_linears

    start = torch.full((images.shape[0], 1), sot, dtype=torch.long)
    enc, read = [], []
    with torch.inference_mode(), packed_linears([model.text.transformer, model.decoder], images.shape[0]):
        for _ in range(reps):
            t0 = time.perf_counter()
            step = _Stepper(model, model.visual(images).tokens)
            step(start)
            enc.append(time.perf_counter() - t0)
        image_kv = [t for layer in step.dec_cache.layers[1::2] for t in (layer.k, layer.v)]
        tensors = step_tensors(model, image_kv)
        for _ in range(reps):
            t0 = time.perf_counter()
            for t in tensors:
                _read(t)
            read.append(time.perf_counter() - t0)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    e, r = statistics.median(enc), statistics.median(read)
    return {"encode_s": e, "read_per_step_s": r, "bytes_per_step": nbytes, "read_gb_per_s": nbytes / r / 1e9,
            "floor_s": e + (tokens - 1) * r}


def _read(t) -> None:
    """Read every byte of ``t`` once, at the rate of a vectorised reduction whatever its dtype: int8's
    own sum accumulates into int64 at about a hundredth of that rate (0.2 against 25 GB/s here), and
    a float sum over arbitrary bytes could meet NaNs and subnormals."""
    import torch

    b = t.detach().reshape(-1).view(torch.uint8)  # (nbytes,)
    whole = b.numel() // 4 * 4
    if whole:
        b[:whole].view(torch.int32).max()
    if whole < b.numel():
        b[whole:].max()
