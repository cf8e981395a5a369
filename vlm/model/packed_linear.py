"""Pre-packed weights for the small matrix products of incremental decoding on CPU.

Each decoding step multiplies only a few rows (batch x beams, one token each) by
every weight matrix of the text tower, the decoder and the LM head. For such
shapes a plain ``F.linear`` spends most of its time re-packing the weight matrix
into the GEMM kernel's blocked layout on every call, reading each weight twice
and writing it once. Packing once per generation (MKL's ``cblas_sgemm_pack``, the
same ``torch.ops.mkl._mkl_linear`` path ``torch.compile`` uses for frozen CPU
models) roughly halves the time of a decoding step. The packed product computes
the same sums in a different blocking: results agree with ``F.linear`` to float
rounding (~1e-6 relative).

Used by ``vlm.generation.decode``; a no-op on GPUs, for non-float32 weights or when the
PyTorch build has no MKL.

    >>> with packed_linears([model.text.transformer, model.decoder], rows=8):
    ...     logits = step(ids)
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CACHE_ATTR = "_vlm_packed"


def available(weight: Tensor) -> bool:
    """True where packing can pay: float32 CPU weights and an MKL-enabled PyTorch."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_linear"))


def _packed(linear: nn.Linear, rows: int) -> Tensor:
    """The weight packed for ``rows``-row products, cached on the module until the weight changes."""
    w = linear.weight
    key = (rows, w.data_ptr(), w._version)
    cached = getattr(linear, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)
    setattr(linear, _CACHE_ATTR, (key, packed))
    return packed


def _forward(self: nn.Linear, x: Tensor) -> Tensor:
    rows = x.numel() // x.shape[-1]
    packed = getattr(self, _CACHE_ATTR)
    if rows != packed[0][0] or torch.is_grad_enabled():
        return F.linear(x, self.weight, self.bias)
    return torch.ops.mkl._mkl_linear(x, packed[1], self.weight, self.bias, rows)


@contextlib.contextmanager
def packed_linears(modules: Iterable[nn.Module], rows: int, skip: tuple[str, ...] = ("kv_proj",)) -> Iterator[int]:
    """Within the block, every ``nn.Linear`` under ``modules`` (names ending in ``skip`` excluded)
    uses weights packed for ``rows``-row inputs; other input sizes take the ordinary path.

    Yields the number of layers packed (0 where packing is unavailable).
    """
    patched: list[nn.Linear] = []
    try:
        for module in modules:
            for name, lin in module.named_modules():
                if not isinstance(lin, nn.Linear) or name.endswith(skip) or not available(lin.weight):
                    continue
                try:
                    _packed(lin, rows)
                except RuntimeError:  # a shape or build the packed kernel does not take: plain path
                    continue
                lin.forward = types.MethodType(_forward, lin)  # instance attribute shadows nn.Linear.forward
                patched.append(lin)
        yield len(patched)
    finally:
        for lin in patched:
            del lin.forward


def clear_cache(model: nn.Module) -> None:
    """Drop the packed copies kept on the model's linear layers (they are rebuilt on demand)."""
    for m in model.modules():
        if hasattr(m, _CACHE_ATTR):
            delattr(m, _CACHE_ATTR)
