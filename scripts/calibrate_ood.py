"""Calibrate the out-of-distribution check (vlm/trust/ood.py) of a checkpoint trained on shapes scenes.

Fits a Gaussian to the model's image features (mean over the tokens of the last ViT block) on
``--fit`` scenes that ``vlm data shapes`` makes with one seed, measures the Mahalanobis distances
of ``--held`` scenes made with another seed, and sets the threshold to ``--margin`` times the
largest held-out distance. Writes ``ood.safetensors`` into the checkpoint directory.

    python scripts/calibrate_ood.py --model vlm/pretrained/default --fit 3000 --held 3000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def features(pipe, paths: list[Path]) -> torch.Tensor:
    from vlm.trust.ood import OODCheck

    out = [OODCheck.features(pipe.model, pipe.images_to_tensor(paths[i:i + 256])) for i in range(0, len(paths), 256)]
    return torch.cat(out).double()  # (N, D)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vlm/pretrained/default")
    ap.add_argument("--fit", type=int, default=3000)
    ap.add_argument("--held", type=int, default=3000)
    ap.add_argument("--fit-seed", type=int, default=1001)
    ap.add_argument("--held-seed", type=int, default=1002)
    ap.add_argument("--margin", type=float, default=1.25)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import vlm
    from safetensors.torch import save_file

    from vlm.data.shapes_dir import generate_shapes

    pipe = vlm.load(args.model)
    size = pipe.model.cfg.vision.image_size
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name, n, seed in (("fit", args.fit, args.fit_seed), ("held", args.held, args.held_seed)):
            root = generate_shapes(Path(tmp) / name, n, seed, image_size=size)
            sets[name] = features(pipe, sorted((Path(root) / "images").iterdir()))
    fit, held = sets["fit"], sets["held"]
    mean = fit.mean(0)
    cov = torch.cov((fit - mean).T)
    cov += 1e-4 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)  # keep it invertible
    whiten = torch.linalg.cholesky(torch.linalg.inv(cov))  # W W^T = cov^-1
    dist = ((held - mean) @ whiten).norm(dim=-1)
    threshold = args.margin * float(dist.max())
    info = {"threshold": round(threshold, 3), "image_size": size, "about": "procedural shapes scenes",
            "fit": {"n": args.fit, "seed": args.fit_seed}, "held": {"n": args.held, "seed": args.held_seed},
            "held_distance": {"median": round(float(dist.median()), 3), "max": round(float(dist.max()), 3)},
            "margin": args.margin, "feature": "mean over tokens of VisionTransformer.forward_features"}
    out = Path(args.model) / "ood.safetensors"
    save_file({"mean": mean.float().contiguous(), "whiten": whiten.float().contiguous()}, str(out),
              metadata={"calibration": json.dumps(info)})
    print(json.dumps(info))


if __name__ == "__main__":
    main()
