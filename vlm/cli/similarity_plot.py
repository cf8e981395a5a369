"""Figures the CLI writes: the image-text similarity heatmap (``vlm similarity --plot``).

matplotlib is imported here only, with the non-interactive Agg backend, so that
plotting never slows down the commands that do not plot.
"""

from __future__ import annotations

import textwrap
from typing import Sequence


def similarity_heatmap(images: Sequence, texts: Sequence[str], cosine: Sequence[Sequence[float]], path,
                       thumb: int = 64) -> None:
    """Rows: images (thumbnails on the left); columns: texts (wrapped, on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sim = np.asarray(cosine, dtype=float)
    n_img, n_txt = sim.shape
    cell = 0.9
    fig_w, fig_h = 2.0 + cell * n_txt + 1.0, 1.8 + cell * n_img
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    left, bottom = 1.4 / fig_w, 0.3 / fig_h
    ax = fig.add_axes([left, bottom, cell * n_txt / fig_w, cell * n_img / fig_h])
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    for i in range(n_img):
        for j in range(n_txt):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if sim[i, j] < sim.mean() else "black")
    ax.set_xticks(range(n_txt))
    ax.set_xticklabels(["\n".join(textwrap.wrap(t, 14)[:3]) for t in texts], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title("cosine similarity (rows: images, columns: texts)", fontsize=9, pad=40)
    for i, img in enumerate(images):
        small = img.copy()
        small.thumbnail((thumb, thumb))
        y0 = bottom + cell * (n_img - 1 - i) / fig_h
        t_ax = fig.add_axes([0.1 / fig_w, y0 + 0.05 / fig_h, 1.2 / fig_w, (cell - 0.1) / fig_h])
        t_ax.imshow(np.asarray(small))
        t_ax.axis("off")
    cax = fig.add_axes([left + (cell * n_txt + 0.2) / fig_w, bottom, 0.2 / fig_w, cell * n_img / fig_h])
    fig.colorbar(im, cax=cax)
    fig.savefig(path, format=plot_format(path))
    plt.close(fig)


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def plot_format(path) -> str:
    """The figure format a path asks for: its extension, or PNG for a name without one (written to
    exactly that name, never NAME.png)."""
    import os

    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    return ext if ext else "png"

