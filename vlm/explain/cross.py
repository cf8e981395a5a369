"""Where the caption decoder looks for each word: its cross-attention mapped onto the image.

The CoCa caption decoder (Yu et al. 2022) reads the text tokens causally and
cross-attends to image tokens in every layer. The text is teacher-forced (the
whole caption in one forward, as in training): decoder position t reads tokens
0..t and predicts token t+1, so map t shows where the decoder looked while
predicting ``text_ids[:, t + 1]`` (the word-level "attend" of Xu et al. 2015).

Per position the attention is averaged over heads and then over all decoder
layers (``layers="mean"``) or taken from the last layer (``layers="last"``).

What the decoder attends to depends on the image-token layout:
- ``pool="cls"``: the decoder reads the ViT's patch tokens; the map is its
  attention on the gh x gw grid directly.
- ``pool="attn"`` (open_clip CoCa): it reads the attentional pooler's n-1
  caption queries, which are not spatial. The map composes the decoder's
  attention over those queries with each query's attention (heads averaged)
  over the ViT output tokens, and keeps the patch part (the share that went
  to the CLS token is dropped, so a map may sum to less than one).

    >>> maps = cross_attention(model, images, tokenizer(["a red circle"], 32))   # (B, L-1, gh, gw)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vlm.explain.attention import capture_attention

LAYER_MODES = ("mean", "last")


@torch.no_grad()
def cross_attention(model, images: Tensor, text_ids: Tensor, layers: str = "mean") -> np.ndarray:
    """(B, L-1, gh, gw): map t is the decoder's attention while predicting ``text_ids[:, t+1]``."""
    if getattr(model, "decoder", None) is None:
        raise ValueError("this model has no caption decoder (a CLIP model): no cross-attention to show")
    if layers not in LAYER_MODES:
        raise ValueError(f"layers must be one of {LAYER_MODES}, got {layers!r}")
    visual = model.visual
    P = visual.cfg.patch_size
    gh, gw = images.shape[-2] // P, images.shape[-1] // P
    mods = {f"cross{i}": layer.cross_block.attn for i, layer in enumerate(model.decoder.layers)}
    if visual.attn_pool is not None:
        mods["pooler"] = visual.attn_pool.attn
    text_ids = text_ids.to(images.device)
    with capture_attention(mods) as rec:
        vis = visual(images)
        txt = model.text(text_ids)
        model.decoder(txt.tokens[:, :-1], vis.tokens)  # teacher forcing, as in CoCa.forward
    per_layer = np.stack([rec.get(f"cross{i}").numpy().mean(axis=1)
                          for i in range(len(model.decoder.layers))])  # (layers, B, L-1, N_img)
    att = per_layer.mean(axis=0) if layers == "mean" else per_layer[-1]  # (B, L-1, N_img)
    if visual.attn_pool is not None:
        pool = rec.get("pooler").numpy().mean(axis=1)[:, 1:]  # (B, n_queries-1, T) caption queries
        att = np.einsum("bqk,bkt->bqt", att, pool)[..., visual.num_prefix:]  # (B, L-1, gh*gw)
    return att.reshape(att.shape[0], att.shape[1], gh, gw)  # (B, L-1, gh, gw)
