"""Which weights a model holds: a short hash that an index stores and checks against its model.

``fingerprint(model)`` hashes every tensor's name, shape and dtype and an evenly strided sample
of its values. ``weights_fingerprint(pipeline)`` is the fingerprint of a loaded pipeline's
float32 weights, taken by ``vlm.load`` before a ``precision`` other than fp32 converts them, so an
index built at one precision opens at another and any other weights are refused.
"""

from __future__ import annotations

import hashlib


def fingerprint(model) -> str:
    """sha256 over every tensor's name, shape, dtype and an evenly strided sample of its values."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(flat[::step].to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def weights_fingerprint(pipeline) -> str:
    """The fingerprint of ``pipeline``'s float32 weights (recorded by ``vlm.load`` when it converted them)."""
    recorded = getattr(pipeline, "fingerprint", None)
    return recorded if recorded is not None else fingerprint(pipeline.model)
