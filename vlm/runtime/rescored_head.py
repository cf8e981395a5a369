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

    >>> head = rescored_head(decoder.lm_head, "bf16")  # vlm.runtime.precision; in place of decoder.lm_head
    >>> logits = head(hidden)                          # (..., D) -> (..., V) float32
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TOP_K = 64  # >= 2 * beams + the guards' 10 candidates for up to 27 beams; more beams: still approximate far down


class RescoredHead(nn.Module):
    """A bias-optional ``nn.Linear`` head as (approximate logits, float32 top ``k``).

    ``approx``: the reduced copy of ``head`` (``vlm.runtime.precision.rescored_head`` builds it),
    fed inputs of ``approx_dtype``."""

    def __init__(self, head: nn.Linear, approx: nn.Module, approx_dtype: torch.dtype, k: int = TOP_K):
        super().__init__()
        self.weight = head.weight  # float32, (V, D): the same parameter, so state-dict keys stay
        self.bias = head.bias
        self.approx = approx
        self.approx_dtype = approx_dtype
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()  # (..., D)
        logits = self.approx(x.to(self.approx_dtype)).float()  # (..., V), approximate; this call's own
        top = logits.topk(min(self.k, logits.shape[-1]), dim=-1).indices  # (..., k)
        exact = (self.weight[top] @ x.unsqueeze(-1)).squeeze(-1)  # (..., k, D) @ (..., D, 1) -> (..., k)
        if self.bias is not None:
            exact = exact + self.bias[top]
        return logits.scatter_(-1, top, exact)  # in place: a copy of every logit took about 0.6 ms a step in a profile
