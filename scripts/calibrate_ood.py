"""Calibrate the out-of-distribution check (vlm/trust/ood.py) of a checkpoint trained on shapes scenes.

Fits a Gaussian to the model's image features (the last ViT block's CLS token beside the mean of
its patch tokens) on ``--fit`` shapes scenes made with one seed, and sets the threshold to the
``--quantile`` of the Mahalanobis distances of ``--held`` scenes made with another seed: the
false-alarm target sets it, nothing else. Then it measures, without changing anything:

- false alarms on ``--test`` scenes made with a third seed (used neither for the fit nor the threshold);
- recall on every procedural family of ``vlm.trust.families`` (``--per-family`` images each,
  seed ``--family-seed``), on the photos and scans that ship inside installed packages, and on
  harder copies of them (grey, 32 px, blurred, cropped, JPEG q10, faded).

Only shapes scenes are fit, so every other family is held out. Writes ``ood.safetensors`` into
the checkpoint directory (``--dry-run``: only report) and prints one JSON object.

    python scripts/calibrate_ood.py --model vlm/pretrained/default
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch


def shapes_scenes(n: int, seed: int, size: int) -> list:
    """Scene i as ``generate_shapes(out, n, seed)`` writes it (rng seeded with [seed, i])."""
    from vlm.data.shapes import render_scene, sample_scene

    out = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, i])
        out.append(render_scene(sample_scene(rng, size), rng, size))
    return out


def features(pipe, images: list, feature: str) -> torch.Tensor:
    from vlm.io.images import preprocess_batch
    from vlm.trust.ood import OODCheck

    out = [OODCheck.features(pipe.model, preprocess_batch(images[i:i + 256], pipe.preprocess_cfg), feature)
           for i in range(0, len(images), 256)]
    return torch.cat(out).double()  # (N, D)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vlm/pretrained/default")
    ap.add_argument("--fit", type=int, default=3000)
    ap.add_argument("--held", type=int, default=3000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--fit-seed", type=int, default=1001)
    ap.add_argument("--held-seed", type=int, default=1002)
    ap.add_argument("--test-seed", type=int, default=90210)
    ap.add_argument("--quantile", type=float, default=0.998, help="of held-out shapes distances: the threshold")
    ap.add_argument("--per-family", type=int, default=150)
    ap.add_argument("--family-seed", type=int, default=5)
    ap.add_argument("--dry-run", action="store_true", help="report only; leave ood.safetensors as it is")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import vlm
    from safetensors.torch import save_file

    from vlm.trust.families import FAMILIES, family_images, harder_variants, packaged_photos
    from vlm.trust.ood import FEATURES, OODCheck

    pipe = vlm.load(args.model, device="cpu")
    size = pipe.model.cfg.vision.image_size
    feature = FEATURES[0]
    fit = features(pipe, shapes_scenes(args.fit, args.fit_seed, size), feature)
    mean = fit.mean(0)
    cov = torch.cov((fit - mean).T)
    cov += 1e-4 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)  # keep it invertible
    whiten = torch.linalg.cholesky(torch.linalg.inv(cov))  # W W^T = cov^-1

    def dist(images):
        return ((features(pipe, images, feature) - mean) @ whiten).norm(dim=-1)

    held = dist(shapes_scenes(args.held, args.held_seed, size))
    threshold = float(torch.quantile(held, args.quantile))
    test = dist(shapes_scenes(args.test, args.test_seed, size))
    recall = {}
    for name in FAMILIES:
        d = dist(family_images(name, args.per_family, args.family_seed))
        recall[name] = {"n": len(d), "flagged": int((d > threshold).sum()),
                        "min_over_threshold": round(float(d.min()) / threshold, 3)}
    photos = packaged_photos()
    colour = [img for name, imgs in photos.items() if name != "skimage-lfw" for img in imgs]
    for name, images in [*photos.items(), *harder_variants(colour).items()]:
        d = dist(images)
        key = f"photos:{name}" if name in photos else f"photos-{name}"
        recall[key] = {"n": len(d), "flagged": int((d > threshold).sum()),
                       "min_over_threshold": round(float(d.min()) / threshold, 3)}
    info = {"threshold": round(threshold, 3), "image_size": size, "about": "procedural shapes scenes",
            "feature_kind": feature, "quantile": args.quantile,
            "fit": {"n": args.fit, "seed": args.fit_seed}, "held": {"n": args.held, "seed": args.held_seed},
            "held_distance": {"median": round(float(held.median()), 3), "max": round(float(held.max()), 3)},
            "feature": "[CLS, mean of patch tokens] of VisionTransformer.forward_features (last block)"}
    report = {**info, "false_alarms": {"n": args.test, "seed": args.test_seed, "flagged": int((test > threshold).sum())},
              "recall": recall, "loadavg": [round(v, 2) for v in os.getloadavg()]}
    if not args.dry_run:
        out = Path(args.model) / "ood.safetensors"
        save_file({"mean": mean.float().contiguous(), "whiten": whiten.float().contiguous()}, str(out),
                  metadata={"calibration": json.dumps(info)})
        OODCheck.for_checkpoint(args.model)  # reads back
    print(json.dumps(report))


if __name__ == "__main__":
    main()
