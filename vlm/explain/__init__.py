"""What the ViT learned: filters, position embeddings, attention distance, rollout, cross-attention.

Following the analysis figures of the ViT paper (Dosovitskiy et al. 2021,
Fig. 7), attention rollout (Abnar & Zuidema 2020) and CoCa's caption decoder
cross-attention (Yu et al. 2022). Every function returns numpy arrays, so a
notebook can plot them its own way; ``vlm.explain.figures`` draws the PNGs
and ``explain_image`` writes them all (``vlm explain IMAGE --out DIR``).

    >>> from vlm.explain import patch_filters, position_similarity, vit_attention
    >>> from vlm.explain import mean_attention_distance, attention_rollout, cross_attention
    >>> att = vit_attention(model, images)                      # att.layers: [(B, heads, T, T)] per layer
    >>> mean_attention_distance(att.layers, att.grid, att.patch_size, att.num_prefix)   # (layers, heads)
    >>> attention_rollout(att.layers, att.num_prefix, att.pooler, att.grid)             # (B, gh, gw)

matplotlib is imported only when a figure is drawn.
"""

from vlm.explain.attention import (
    ViTAttention,
    attention_maps,
    attention_probs,
    capture_attention,
    vit_attention,
)
from vlm.explain.cross import cross_attention
from vlm.explain.distance import mean_attention_distance, patch_distances, uniform_attention_distance
from vlm.explain.filters import filter_pca, patch_filters
from vlm.explain.position import position_similarity
from vlm.explain.rollout import attention_rollout, rollout_matrix

__all__ = [
    "ViTAttention",
    "attention_maps",
    "attention_probs",
    "attention_rollout",
    "capture_attention",
    "cross_attention",
    "filter_pca",
    "mean_attention_distance",
    "patch_distances",
    "patch_filters",
    "position_similarity",
    "rollout_matrix",
    "uniform_attention_distance",
    "vit_attention",
]
