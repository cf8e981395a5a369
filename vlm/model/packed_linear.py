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

bfloat16 weights (``--precision bf16``) are packed the same way by oneDNN
(``torch.ops.mkldnn._reorder_linear_weight``, the path ``torch.compile`` takes for frozen
bfloat16 linears on CPU); there the packed product is bit-identical to ``F.linear``'s and took
0.43-0.64x its time at 8 rows on an AVX512-BF16 CPU; a whole bf16 greedy caption of
coca_ViT-B-32 was about 15% faster at one thread, no faster at two (BENCHMARKS.md, "Reduced precision").
An MLP whose first product is packed in bfloat16 and whose activation is GELU takes the GELU inside
that product (oneDNN's post-op, on the float32 sums before they round to bfloat16): 134 us against
187 us for the (8, 512) x (512, 2048) product and a separate GELU at two threads; the largest
difference was 0.3% of the largest output there.

Used by ``vlm.generation.decode``; a no-op on GPUs, for other weight types, or when the PyTorch
build has no MKL (float32) or no native bfloat16 oneDNN kernels (bfloat16).

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


def _bf16_kernels() -> bool:
    """oneDNN's packed linear with native bfloat16 products (AVX512-BF16 / AMX) in this build."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def available(weight: Tensor) -> bool:
    """True where packing can pay: CPU weights in float32 with MKL, or in bfloat16 with oneDNN's kernels."""
    if weight.device.type != "cpu":
        return False
    if weight.dtype == torch.float32:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    return weight.dtype == torch.bfloat16 and _bf16_kernels()


def _packed(linear: nn.Linear, rows: int) -> Tensor:
    """The weight packed for ``rows``-row products, cached on the module until the weight changes."""
    w = linear.weight
    key = (rows, w.data_ptr(), w._version, w.dtype)
    cached = getattr(linear, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        if w.dtype == torch.bfloat16:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)
        else:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)
    setattr(linear, _CACHE_ATTR, (key, packed))
    return packed


def _forward(self: nn.Linear, x: Tensor) -> Tensor:
    rows = x.numel() // x.shape[-1]
    packed = getattr(self, _CACHE_ATTR)
    if rows != packed[0][0] or torch.is_grad_enabled() or x.dtype != self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    if x.dtype == torch.bfloat16:
        flat = x.reshape(rows, x.shape[-1]).contiguous()  # (rows, in)
        out = torch.ops.mkldnn._linear_pointwise(flat, packed[1], self.bias, "none", [], "")  # (rows, out)
        return out.view(*x.shape[:-1], out.shape[-1])
    return torch.ops.mkl._mkl_linear(x, packed[1], self.weight, self.bias, rows)


def _gelu_mlp_forward(self, x: Tensor) -> Tensor:
    """``fc2(gelu(fc1(x)))`` with the GELU fused into fc1's packed bfloat16 product."""
    rows = x.numel() // x.shape[-1]
    packed = getattr(self.fc1, _CACHE_ATTR)
    if rows != packed[0][0] or torch.is_grad_enabled() or x.dtype != torch.bfloat16:
        return self.fc2(self.act(self.fc1(x)))
    flat = x.reshape(rows, x.shape[-1]).contiguous()  # (rows, in)
    h = torch.ops.mkldnn._linear_pointwise(flat, packed[1], self.fc1.bias, "gelu", [], self.act.approximate)
    return self.fc2(h.view(*x.shape[:-1], h.shape[-1]))  # (..., hidden) -> (..., out)


def _fusable_gelu(module: nn.Module, patched: list) -> bool:
    fc1, act = getattr(module, "fc1", None), getattr(module, "act", None)
    return (isinstance(act, nn.GELU) and isinstance(getattr(module, "fc2", None), nn.Module)
            and any(fc1 is lin for lin in patched) and fc1.weight.dtype == torch.bfloat16)


@contextlib.contextmanager
def packed_linears(modules: Iterable[nn.Module], rows: int, skip: tuple[str, ...] = ("kv_proj",)) -> Iterator[int]:
    """Within the block, every ``nn.Linear`` under ``modules`` (names ending in ``skip`` excluded)
    uses weights packed for ``rows``-row inputs; other input sizes take the ordinary path.

    An MLP (``fc1``, ``act``, ``fc2``) with a bfloat16 ``fc1`` packed here and a GELU ``act`` takes
    the GELU inside ``fc1``'s product. Yields the number of layers packed (0 where packing is unavailable).
    """
    patched: list[nn.Linear] = []
    fused: list[nn.Module] = []
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
        for module in modules:
            for mlp in module.modules():
                if _fusable_gelu(mlp, patched):
                    mlp.forward = types.MethodType(_gelu_mlp_forward, mlp)
                    fused.append(mlp)
        yield len(patched)
    finally:
        for lin in patched:
            del lin.forward
        for mlp in fused:
            del mlp.forward


def clear_cache(model: nn.Module) -> None:
    """Drop the packed copies kept on the model's linear layers (they are rebuilt on demand)."""
    for m in model.modules():
        if hasattr(m, _CACHE_ATTR):
            delattr(m, _CACHE_ATTR)
