"""An LM head read at reduced precision whose best logits are recomputed in float32.

The caption decoder's LM head is its largest matrix (49,408 x 512 for coca_ViT-B-32: 101 MB in
float32), read whole at every decoding step. Cast to bfloat16, its logits round to 8 bits of
mantissa, and two candidates a trained model ranks 0.01 apart can come out equal, so the argmax
flips (docs/precision.md). ``RescoredHead`` keeps both:

1. every logit from a reduced-precision copy of the head (bfloat16, or dynamic int8), which reads
   a half or a quarter of the bytes;
2. the ``k`` highest of each row recomputed exactly from the float32 weights (``k`` rows of the
   matrix, gathered).

So the argmax is float32's, and so is every logit the reduced copy ranks among its ``k`` best, up
to summation order: a float32 best outside those ``k`` would need the copy's error to exceed the
gap between the 1st and the ``k``-th logit. The rest are the copy's, close but not exact: they
enter softmax normalisers and far-down beam candidates only.

    >>> head = RescoredHead(decoder.lm_head, "bf16")   # in place of decoder.lm_head
    >>> logits = head(hidden)                          # (..., D) -> (..., V) float32
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

TOP_K = 64  # >= 2 * beams + the guards' 10 candidates for up to 27 beams; more beams: still approximate far down


class RescoredHead(nn.Module):
    """A bias-optional ``nn.Linear`` head as (approximate logits, float32 top ``k``)."""

    def __init__(self, head: nn.Linear, precision: str, k: int = TOP_K):
        super().__init__()
        self.weight = head.weight  # float32, (V, D): the same parameter, so state-dict keys stay
        self.bias = head.bias
        self.k = k
        approx = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
        with torch.no_grad():
            approx.weight.copy_(head.weight)
            if head.bias is not None:
                approx.bias.copy_(head.bias)
        if precision == "bf16":
            self.approx = approx.to(head.weight.device, torch.bfloat16)
            self.approx_dtype = torch.bfloat16
        elif precision == "int8":
            with warnings.catch_warnings():  # torch 2.9+ announces the eager API's move to torchao
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                self.approx = torch.ao.quantization.quantize_dynamic(
                    nn.Sequential(approx), {nn.Linear}, dtype=torch.qint8)[0]
            self.approx_dtype = torch.float32
        else:
            raise ValueError(f"no reduced-precision head for {precision!r}")

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # (..., D)
        logits = self.approx(x.to(self.approx_dtype)).float()  # (..., V), approximate
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices  # (..., k)
        exact = (self.weight[top] @ x.unsqueeze(-1)).squeeze(-1)  # (..., k, D) @ (..., D, 1) -> (..., k)
        if self.bias is not None:
            exact = exact + self.bias[top]
        return logits.scatter(-1, top, exact)
