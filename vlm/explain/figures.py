"""The PNG figures of ``vlm explain``, drawn with matplotlib (Agg backend, imported lazily).

Each function takes the numpy arrays the other ``vlm.explain`` modules return
and writes one self-explanatory PNG: filters (ViT paper Fig. 7 left), position
similarity (Fig. 7 centre), mean attention distance (Fig. 7 right), the
attention-rollout overlay (Abnar & Zuidema 2020) and per-token decoder
cross-attention overlays.

    >>> from vlm.explain import figures
    >>> figures.plot_filters(patch_filters(model), "filters.png")
"""

from __future__ import annotations

import math
import textwrap
from typing import Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _unit(tile: np.ndarray) -> np.ndarray:
    """Min-max scale one tile to [0, 1] (a constant tile becomes mid-grey)."""
    lo, hi = float(tile.min()), float(tile.max())
    return np.full_like(tile, 0.5) if hi - lo < 1e-12 else (tile - lo) / (hi - lo)


def _save(fig, path) -> None:
    fig.savefig(path, dpi=fig.dpi)
    _plt().close(fig)


def tile_figure(tiles: Sequence[np.ndarray], labels: Optional[Sequence[str]], title: str, cols: int,
                tile_inches: float, interpolation: str = "nearest", fontsize: int = 8):
    """One figure showing equally sized (h, w, 3) tiles on a white canvas, a label above each.

    A single image instead of one axes per tile keeps drawing fast for many tiles.
    """
    plt = _plt()
    n = len(tiles)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    h, w = tiles[0].shape[:2]
    scale = tile_inches / w  # inches per tile pixel
    gap_x = max(1, round(0.12 * w))
    gap_y = max(2, round(0.28 / scale))  # room for one label line, in tile pixels
    canvas = np.ones((rows * (h + gap_y), cols * (w + gap_x) - gap_x, 3))
    spots = []
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y0, x0 = r * (h + gap_y) + gap_y, c * (w + gap_x)
        canvas[y0 : y0 + h, x0 : x0 + w] = tile
        spots.append((x0 + w / 2, y0))
    body_w, body_h = canvas.shape[1] * scale, canvas.shape[0] * scale  # inches
    title_h = 0.18 * (title.count("\n") + 1) + 0.2
    fig_w, fig_h = max(body_w + 0.3, 4.0), body_h + title_h + 0.1
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    ax = fig.add_axes(((fig_w - body_w) / 2 / fig_w, 0.1 / fig_h, body_w / fig_w, body_h / fig_h))
    ax.imshow(canvas, interpolation=interpolation, aspect="equal")
    ax.axis("off")
    if labels is not None:
        for (x, y), label in zip(spots, labels):
            ax.text(x, y - 0.5, label, ha="center", va="bottom", fontsize=fontsize)
    fig.text(0.5, 1 - 0.1 / fig_h, title, ha="center", va="top", fontsize=9)
    return fig


def plot_filters(tiles: np.ndarray, path, title: str = "Patch-embedding filters",
                 labels: Optional[Sequence[str]] = None, cols: Optional[int] = None) -> None:
    """(n, P, P, 3) RGB tiles in a grid, each scaled to [0, 1] on its own."""
    shown = [_unit(t) for t in tiles]
    _save(tile_figure(shown, labels, title, cols or 7, tile_inches=1.1, fontsize=7), path)


def plot_position_similarity(sim: np.ndarray, path, title: str = "Position-embedding similarity") -> None:
    """(gh, gw, gh, gw) similarities: tile (r, c) of the mosaic is patch (r, c)'s similarity map."""
    plt = _plt()
    gh, gw = sim.shape[:2]
    cell_h, cell_w = gh + 1, gw + 1  # one blank row/column separates the small maps
    mosaic = np.full((gh * cell_h - 1, gw * cell_w - 1), np.nan)
    for r in range(gh):
        for c in range(gw):
            mosaic[r * cell_h : r * cell_h + gh, c * cell_w : c * cell_w + gw] = sim[r, c]
    side = min(9.0, max(4.0, 0.45 * max(gh, gw) + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    off_diagonal = sim.reshape(gh * gw, gh * gw)[~np.eye(gh * gw, dtype=bool)]
    low = math.floor(float(off_diagonal.min()) * 10) / 10 if off_diagonal.size else -1.0
    im = ax.imshow(mosaic, cmap=cmap, vmin=max(-1.0, min(low, 0.9)), vmax=1, interpolation="nearest")
    step = max(1, math.ceil(max(gh, gw) / 16))  # at most ~16 tick labels per axis
    ax.set_xticks([c * cell_w + (gw - 1) / 2 for c in range(0, gw, step)])
    ax.set_xticklabels([str(c + 1) for c in range(0, gw, step)], fontsize=8)
    ax.set_yticks([r * cell_h + (gh - 1) / 2 for r in range(0, gh, step)])
    ax.set_yticklabels([str(r + 1) for r in range(0, gh, step)], fontsize=8)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    fig.tight_layout()
    _save(fig, path)


def plot_attention_distance(dist: np.ndarray, path, title: str = "Mean attention distance",
                            reference: Optional[float] = None, max_distance: Optional[float] = None) -> None:
    """(layers, heads) distances in pixels: one dot per head, layer on the x axis."""
    plt = _plt()
    L, H = dist.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * L + 3.5), 4.3), dpi=100)
    colors = plt.get_cmap("tab10" if H <= 10 else "tab20")(np.arange(H) % 20)
    for h in range(H):
        offset = (h - (H - 1) / 2) * min(0.05, 0.5 / H)  # spread the heads of a layer a little
        ax.scatter(np.arange(1, L + 1) + offset, dist[:, h], s=22, color=colors[h], alpha=0.85, edgecolors="none",
                   label=f"head {h + 1}" if H <= 16 else None)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
        ax.text(L + 0.45, reference, "uniform\nattention", fontsize=7, color="grey", va="bottom")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(1, L + 1))
    ax.set_xlim(0.5, L + 1.5)
    top = max_distance
    if top is None:
        top = max(float(np.nanmax(dist)) if np.isfinite(dist).any() else 0.0, reference or 0.0) * 1.15 or 1.0
    ax.set_ylim(0, top)
    if H <= 16:
        ax.legend(fontsize=6, ncol=2 if H > 8 else 1, loc="best", framealpha=0.7)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def upsample(heat: np.ndarray, size: tuple) -> np.ndarray:
    """Bilinearly stretch a (gh, gw) map to (H, W) pixels."""
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))


def masked(image: np.ndarray, heat: np.ndarray, floor: float = 0.2) -> np.ndarray:
    """The image dimmed where the map is low: pixel * (floor + (1 - floor) * map / max(map))."""
    peak = float(np.max(heat)) if np.size(heat) else 0.0
    weight = upsample(heat / peak if peak > 0 else np.ones_like(heat), image.shape[:2])  # (H, W) in [0, 1]
    return image * (floor + (1 - floor) * np.clip(weight, 0, 1))[..., None]


def _overlay(ax, image: np.ndarray, heat: np.ndarray) -> None:
    """Draw the image masked by the heat map (bright where attention is high)."""
    ax.imshow(masked(image, heat))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention_overlay(image: np.ndarray, heat: np.ndarray, path, title: str = "Attention rollout") -> None:
    """Three panels: the model's input image, the (gh, gw) map, and the map over the image."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.7), dpi=100)
    axes[0].imshow(image)
    axes[0].set_title("input (as the model sees it)", fontsize=8)
    gh, gw = heat.shape
    im = axes[1].imshow(heat, cmap="inferno", interpolation="nearest")
    axes[1].set_title(f"map on the {gh}x{gw} patch grid", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03, label="share of attention flow")
    _overlay(axes[2], image, heat)
    axes[2].set_title("image x map (map scaled to its max)", fontsize=8)
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_token_maps(image: np.ndarray, maps: np.ndarray, tokens: Sequence[str], path,
                    title: str = "Decoder cross-attention per token", cols: int = 6) -> None:
    """A strip of overlays, one per (gh, gw) map, titled with its token."""
    shown = [masked(image, m) for m in maps]
    labels = [repr(t) if t.strip() != t or not t else t for t in tokens]
    title = "\n".join(textwrap.wrap(title, 22 * max(1, min(cols, len(tokens)))))
    _save(tile_figure(shown, labels, title, cols, tile_inches=1.7, interpolation="antialiased", fontsize=9), path)
