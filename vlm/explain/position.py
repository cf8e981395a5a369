"""Position-embedding similarity: what the ViT learned about 2-D layout (Dosovitskiy et al. 2021, Fig. 7 centre).

The ViT's position embeddings are free 1-D vectors, one per patch. If training
discovered the image's 2-D structure, the embedding of a patch is most similar
to those of patches in the same row and column, and similarity decays with
distance. ``position_similarity`` returns, for every patch (r, c), the cosine
similarity of its embedding to every patch (r', c'): an array S[r, c, r', c'].
The CLS embedding is left out.

At another resolution (``grid`` differs from the trained one) the embeddings
are the bicubically resized ones the model actually adds to the patches.

    >>> sim = position_similarity(model)            # (gh, gw, gh, gw)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vlm.explain.attention import visual_of


@torch.no_grad()
def position_similarity(model, grid: Optional[tuple] = None) -> np.ndarray:
    """(gh, gw, gh, gw) cosine similarity between the position embeddings of every pair of patches."""
    visual = visual_of(model)
    gh, gw = grid if grid is not None else (visual.grid, visual.grid)
    pos = visual.pos_embed_for(gh, gw)[visual.num_prefix:].float()  # (gh*gw, W)
    unit = F.normalize(pos, dim=-1)
    sim = unit @ unit.t()  # (N, N)
    return sim.reshape(gh, gw, gh, gw).cpu().numpy()
