"""Reduced precision for inference: a loaded float32 model cast to bfloat16 or quantised to int8.

Decoding a caption reads every weight matrix of the text tower and the decoder once per token,
for a handful of rows: on a CPU the step is bound by the bytes it reads (BENCHMARKS.md, "Why
greedy stays near 5x"). Fewer bytes per weight is the way to fewer seconds per token.

    fp32  the model as trained (the default)
    bf16  weights, activations and the key/value cache in bfloat16 (half the bytes). Native on
          CPUs with AVX512-BF16 or AMX and on CUDA GPUs with bfloat16; elsewhere it runs, slowly,
          and ``to_precision`` warns once in one line
    int8  PyTorch's dynamic int8 quantisation of every ``nn.Linear``
          (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised
          per batch, float32 everywhere else); CPU only. PyTorch's rather than onnxruntime's, as
          the decoding loop, the guards and the API run on PyTorch modules (docs/precision.md
          gives what was measured of each)

    >>> model = to_precision(model, "bf16", torch.device("cpu"))   # in place; returns the model
    >>> x = images.to(input_dtype(model))

In both, the caption decoder's LM head becomes a ``RescoredHead``: every logit from a reduced copy
(int8 on a CPU, ``head_copy_precision``), each row's best 64 recomputed from the float32 weights, so
the token a step picks is float32's unless float32's best lies outside the copy's 64
(``vlm.runtime.rescored_head``).

A precision the machine cannot run (int8 on a GPU, bf16 on a GPU without it) raises
``InvalidOption`` naming ``precision``. How close each precision stays to float32 on your own
model and images: ``vlm check-precision`` (``vlm.runtime.agreement``).
"""

from __future__ import annotations

import copy
import warnings
from functools import lru_cache
from typing import Optional

import torch
from torch import nn

from vlm.errors import InvalidOption

PRECISIONS = ("fp32", "bf16", "int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "int8": 1}
_warned: list = []  # the slow-bf16 note, once per process


class SlowPrecisionWarning(UserWarning):
    """A precision that runs but is emulated on this machine (bf16 without AVX512-BF16 or AMX)."""

    def cli_message(self) -> str:
        return str(self)


@lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True when this CPU computes bfloat16 products natively (AVX512-BF16 or AMX-BF16).

    Read from /proc/cpuinfo's flags (Linux); elsewhere, from oneDNN's own answer when this
    torch exposes it."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ``InvalidOption`` when ``precision`` is unknown or cannot run on ``device``;
    warn (``SlowPrecisionWarning``, one line) when it runs but is emulated there."""
    if precision not in PRECISIONS:
        raise InvalidOption("precision", precision, f"must be one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        if device.type != "cpu":
            raise InvalidOption("precision", precision, f"dynamic int8 quantisation runs on the CPU only, not "
                                f"{device.type}; use bf16 there")
        if _int8_engine() is None:
            raise InvalidOption("precision", precision, "this PyTorch build has no quantised engine "
                                "(fbgemm, x86, onednn or qnnpack)")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InvalidOption("precision", precision, f"{torch.cuda.get_device_name(device)} has no bfloat16")
        if device.type == "cpu" and not cpu_bf16_native() and not _warned:
            _warned.append(precision)  # once per process, however many checks
            warnings.warn(SlowPrecisionWarning(
                "precision bf16: this CPU has neither AVX512-BF16 nor AMX, so bfloat16 is emulated and will "
                "be slower than fp32 (use fp32 or int8)"), stacklevel=3)


def to_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``model`` (float32, eval mode, on ``device``) at ``precision``, converted in place.

    Checked first (``check_precision``). int8 replaces each ``nn.Linear`` by a dynamically quantised
    one; the model then takes float32 inputs. bf16 casts every floating tensor but the decoder's
    final norm (``_output_layer_in_float32``). Either way the decoder's LM head becomes a
    ``RescoredHead`` built from its float32 weights."""
    check_precision(precision, device)
    if precision == "fp32":
        return model
    head = _rescored_head(model, head_copy_precision(precision, device))  # float32 weights, before any cast
    if precision == "bf16":
        model.to(torch.bfloat16)
        _output_layer_in_float32(model)
    else:
        quantize_linears(model)
    if head is not None:
        model.decoder.lm_head = head
    return model


def quantize_linears(module: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` under ``module`` dynamically quantised to int8, in place (PyTorch's
    quantised engine chosen first where none usable is set); returns ``module``."""
    engine = _int8_engine()  # None only where check_precision refuses int8
    if engine is not None and torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    with warnings.catch_warnings():  # torch 2.9+ announces the eager API's move to torchao on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        linears = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
        return torch.ao.quantization.quantize_dynamic(module, linears, dtype=torch.qint8, inplace=True)


def rescored_head(head: nn.Linear, precision: str, k: Optional[int] = None) -> nn.Module:
    """``head`` (float32) as a ``RescoredHead`` over a bf16 or dynamic-int8 copy of it."""
    from vlm.runtime.rescored_head import TOP_K, RescoredHead

    approx = copy.deepcopy(head)
    if precision == "bf16":
        approx, dtype = approx.to(torch.bfloat16), torch.bfloat16
    elif precision == "int8":
        approx, dtype = quantize_linears(nn.Sequential(approx))[0], torch.float32
    else:
        raise ValueError(f"no reduced-precision head for {precision!r}")
    return RescoredHead(head, approx, dtype, TOP_K if k is None else k)


def head_copy_precision(precision: str, device: torch.device) -> str:
    """The precision of the LM head's reduced copy in a ``precision`` model on ``device``: int8 on a
    CPU with a quantised engine, the model's own elsewhere.

    The copy only ranks each row's candidates; the best 64 are recomputed from the float32 weights
    at either precision. An int8 copy reads half the bytes of a bf16 one, and the head is the largest
    matrix a decoding step reads (49,408 x 512 for coca_ViT-B-32): at 8 rows on one core its int8
    copy took 1.7-2.1 ms against 4.3-4.8 ms for the bf16 one (docs/precision.md)."""
    if precision == "bf16" and device.type == "cpu" and _int8_engine() is not None:
        return "int8"
    return precision


def _int8_engine() -> Optional[str]:
    """A usable quantised engine of this PyTorch build (the one set, else the first of ours), or None."""
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine != "none" and torch.backends.quantized.engine in engines:
        return torch.backends.quantized.engine
    return next((e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in engines), None)


def _rescored_head(model: nn.Module, precision: str) -> Optional[nn.Module]:
    """The decoder's LM head as a ``RescoredHead`` (None for models without a caption decoder); the
    decoder holds an ``nn.Identity`` in its place until the rest of the model is converted."""
    decoder = getattr(model, "decoder", None)
    head = getattr(decoder, "lm_head", None)
    if not isinstance(head, nn.Linear):
        return None
    rescored = rescored_head(head, precision)
    decoder.lm_head = nn.Identity()  # out of reach of the cast and of quantize_dynamic
    return rescored


def _to_float32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_layer_in_float32(model: nn.Module) -> None:
    """The caption decoder's final norm back in float32, on float32 inputs (the LM head after it
    is a ``RescoredHead``).

    bfloat16 keeps 8 bits of mantissa: logits near 10 round to steps of 1/16, so two candidates
    a trained model ranks 0.01 apart come out exactly equal and the argmax takes the lower id.
    On the default model these ties were nearly every bf16 disagreement (docs/precision.md)."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        return
    decoder.norm_final.float()
    decoder.norm_final.register_forward_pre_hook(_to_float32)


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's inputs must have: that of its first floating parameter (float32 for
    fp32 and int8 models, whose remaining parameters stay float32)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def precision_of(model: nn.Module) -> str:
    """``"int8"`` when the model holds dynamically quantised linears (an LM head's reduced copy aside:
    a bf16 model's may be int8, ``head_copy_precision``), else fp32 or bf16 by its dtype."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from vlm.runtime.rescored_head import RescoredHead

    copies = {id(m) for head in model.modules() if isinstance(head, RescoredHead) for m in head.approx.modules()}
    if any(isinstance(m, QLinear) and id(m) not in copies for m in model.modules()):
        return "int8"
    return "bf16" if input_dtype(model) == torch.bfloat16 else "fp32"
