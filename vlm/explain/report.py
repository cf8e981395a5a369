"""``explain_image``: compute every explanation for one image and write the figures ``vlm explain`` shows.

Given a loaded ``vlm.api.Pipeline`` (so ``--image-size`` applies), one image and
an output directory, it writes:

- ``filters.png``             patch-embedding filters (principal components or raw)
- ``position_similarity.png`` cosine similarity between position embeddings
- ``attention_distance.png``  mean attention distance per head and layer
- ``attention_rollout.png``   attention rollout from the pooled token over the image
- ``token_attention.png``     decoder cross-attention per caption token (CoCa only;
  the given text, or the model's own greedy caption)

Run: ``vlm explain IMAGE --out DIR [--text "a caption"]`` or, from Python,
``explain_image(vlm.load(...), "cat.jpg", "out/")``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vlm.errors import InvalidOption, UsageError
from vlm.explain import figures
from vlm.explain.attention import vit_attention
from vlm.explain.cross import cross_attention
from vlm.explain.distance import mean_attention_distance, uniform_attention_distance
from vlm.explain.filters import filter_pca, filter_weights, patch_filters
from vlm.explain.position import position_similarity
from vlm.explain.rollout import attention_rollout


@dataclass
class Explanation:
    """What ``explain_image`` computed and wrote."""

    files: dict = field(default_factory=dict)  # figure name -> PNG path
    caption: Optional[str] = None  # the text of the token figure
    caption_generated: bool = False  # True when the model captioned the image itself
    distances: Optional[np.ndarray] = None  # (layers, heads) pixels
    rollout: Optional[np.ndarray] = None  # (gh, gw)


def display_image(x: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised model input -> (H, W, 3) RGB in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


def token_label(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id]).strip()
    if not text and hasattr(tokenizer, "id_to_piece"):
        text = tokenizer.id_to_piece(token_id)
    return text or f"#{token_id}"


def caption_tokens(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """(decoder position that predicts it, id) for each text token between start and end token."""
    out = []
    for j in range(1, len(ids)):
        if ids[j] in (tokenizer.eot_id, tokenizer.pad_id):
            break
        out.append((j - 1, ids[j]))
    return out


def explain_image(pipe, image, out_dir, text: Optional[str] = None, filters: str = "pca", num_filters: int = 28,
                  layers: str = "mean", generation=None) -> Explanation:
    """Write the explain figures for one image (path or PIL image) into ``out_dir``.

    Without ``text`` a CoCa model first captions the image (``generation``: a
    ``vlm.generation.GenerationConfig``, default greedy).
    """
    model = pipe.model
    if text is not None and not pipe.can_caption:
        raise InvalidOption("text", text, f"needs a caption decoder, and {pipe.name} has none (a CLIP model)")
    if text is not None and not text.strip():
        raise InvalidOption("text", text, "is empty: give the caption whose words to explain")
    vcfg = model.cfg.vision
    P = vcfg.patch_size
    x = pipe.images_to_tensor([image])  # (1, 3, S, S)
    if text is not None or not pipe.can_caption:  # else the caption below gives the out-of-distribution notice
        with pipe.ood_run():
            pipe.ood_flags(x)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidOption("out_dir", str(out_dir), f"cannot create the directory ({e.strerror or e})",
                            flag="--out") from None
    S = x.shape[-1]
    grid = (x.shape[-2] // P, x.shape[-1] // P)
    pic = display_image(x[0], pipe.preprocess_cfg.mean, pipe.preprocess_cfg.std)
    res = f"{S}x{S} input, {grid[0]}x{grid[1]} patches of {P}x{P} px"
    if S != vcfg.image_size:
        res += f", position embeddings resized from {vcfg.image_size // P}x{vcfg.image_size // P}"
    name = pipe.name
    result = Explanation()

    weight = filter_weights(model)
    if filters == "pca":
        tiles, share = filter_pca(weight, num_filters)
        labels = [f"PC{i + 1} ({100 * v:.1f}%)" for i, v in enumerate(share)]
        ftitle = (f"Patch-embedding filters of {name}: the first {len(tiles)} principal components of its "
                  f"{weight.shape[0]} RGB filters ({P}x{P}), with the share of variance each explains; "
                  f"each tile is scaled to its own min..max")
    else:
        tiles = patch_filters(model, num_filters, mode="raw")
        labels = [f"filter {i + 1}" for i in range(len(tiles))]
        ftitle = (f"Patch-embedding filters of {name}: the first {len(tiles)} of {weight.shape[0]} raw RGB "
                  f"filters ({P}x{P}); each tile is scaled to its own min..max")
    result.files["filters"] = _write(figures.plot_filters, out / "filters.png", tiles, title=_wrap(ftitle, 90),
                                     labels=labels)

    sim = position_similarity(model, grid)
    result.files["position_similarity"] = _write(
        figures.plot_position_similarity, out / "position_similarity.png", sim,
        title=_wrap(f"Position-embedding similarity of {name} ({res}). Small map at row r, column c: cosine "
                    f"similarity of patch (r, c)'s position embedding to every patch's", 80))

    att = vit_attention(model, x)
    dist = mean_attention_distance(att.layers, att.grid, P, att.num_prefix)
    ref = uniform_attention_distance(att.grid, P)
    top = max(float(np.nanmax(dist)) if np.isfinite(dist).any() else 0.0, ref) * 1.15
    result.distances = dist
    result.files["attention_distance"] = _write(
        figures.plot_attention_distance, out / "attention_distance.png", dist, reference=ref, max_distance=top,
        title=_wrap(f"Mean attention distance per head of {name} on this image ({res}). Distance between patch "
                    f"centres weighted by attention, CLS token excluded, averaged over query patches", 72))

    roll = attention_rollout(att.layers, att.num_prefix, att.pooler, att.grid)[0]
    result.rollout = roll
    src = ("the attentional pooler's contrastive query, composed with the rollout" if att.pooler is not None
           else "the CLS token")
    result.files["attention_rollout"] = _write(
        figures.plot_attention_overlay, out / "attention_rollout.png", pic, roll,
        title=f"Attention rollout of {name} from {src} ({len(att.layers)} layers: heads averaged, identity added "
              f"for the residual, rows renormalised, multiplied through); {res}")

    if pipe.can_caption:
        if text is None:
            text = pipe.caption([image], generation)[0]
            result.caption_generated = True
        result.caption = text
        ids = pipe.tokenizer([text], context_length=model.cfg.text.context_length).to(x.device)  # (1, L)
        toks = caption_tokens(pipe.tokenizer, ids[0].tolist())
        if toks:
            maps = cross_attention(model, x, ids, layers=layers)[0]  # (L-1, gh, gw)
            how = (f"heads and all {len(model.decoder.layers)} decoder layers averaged" if layers == "mean"
                   else "heads of the last decoder layer averaged")
            via = " through the attentional pooler's caption queries" if att.pooler is not None else ""
            origin = "the model's own greedy caption" if result.caption_generated else "the given text"
            result.files["token_attention"] = _write(
                figures.plot_token_maps, out / "token_attention.png", pic, maps[[p for p, _ in toks]],
                [token_label(pipe.tokenizer, t) for _, t in toks],
                title=f"Caption decoder cross-attention{via} while predicting each token of \"{text}\" "
                      f"({origin}, teacher-forced; {how}); bright = attended, each map scaled to its own max")
    return result


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _write(plot, path: Path, *args, **kwargs) -> str:
    try:
        plot(*args, path, **kwargs)
    except OSError as e:
        raise UsageError(f"{path}: cannot write the figure ({e.strerror or e})") from None
    return str(path)
