"""The files of a Hugging Face model directory, read for the CLIP and the ViT importers alike.

``read_json`` (one-line ``CheckpointError`` on a missing or broken file), ``find_weights`` (which
weights file a ``save_pretrained`` directory holds) and ``preprocess_from_hf`` (a CLIPImageProcessor
/ ViTImageProcessor config as vlm's ``PreprocessConfig``). Used by ``vlm.convert.hf`` (CLIPModel)
and ``vlm.convert.hf_vit`` (ViTForImageClassification).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm.errors import CheckpointError
from vlm.model.config import PreprocessConfig

_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def read_json(path: Path, library: str = "Hugging Face") -> dict:
    """A model directory's JSON file; ``CheckpointError`` (one line) when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (not a {library} model directory)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None


def find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights ({' or '.join(WEIGHT_FILES[::2])})")


def preprocess_from_hf(pp: dict, image_size: int, source="preprocessor_config.json") -> PreprocessConfig:
    """vlm preprocessing from a CLIPImageProcessor config: resize the short side + center crop
    (``size.shortest_edge`` == ``crop_size``; crop offsets rounded down as transformers does) or
    squash (``size`` height/width, no crop)."""
    size, crop = pp.get("size", {"shortest_edge": 224}), pp.get("crop_size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_resize, do_crop = pp.get("do_resize", True), pp.get("do_center_crop", True)
    if not do_resize:
        raise CheckpointError(f"{source}: do_resize=false is not supported (vlm always resizes)")
    if "shortest_edge" in size:
        if not do_crop or crop.get("height") != crop.get("width") or crop.get("height") != size["shortest_edge"]:
            raise CheckpointError(f"{source}: resize to {size['shortest_edge']} then crop {crop} is not supported "
                                  f"(vlm resizes the short side to the crop size)")
        mode, out = "shortest", size["shortest_edge"]
    elif "height" in size and "width" in size and size["height"] == size["width"]:
        mode, out = "squash", size["height"]
        if do_crop and (crop.get("height"), crop.get("width")) != (out, out):
            raise CheckpointError(f"{source}: squash to {out} then crop {crop} is not supported")
    else:
        raise CheckpointError(f"{source}: image size {size} is not supported")
    if out != image_size:
        raise CheckpointError(f"{source}: preprocessing makes {out}x{out} images but the model takes "
                              f"{image_size}x{image_size}")
    resample = pp.get("resample", 3)
    if resample not in _RESAMPLE:
        raise CheckpointError(f"{source}: resample={resample} is not supported (2 bilinear or 3 bicubic)")
    if pp.get("do_rescale", True) and abs(pp.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise CheckpointError(f"{source}: rescale_factor {pp['rescale_factor']} is not supported (1/255)")
    if pp.get("do_normalize", True):
        mean, std = tuple(pp.get("image_mean", PreprocessConfig().mean)), tuple(pp.get("image_std", PreprocessConfig().std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return PreprocessConfig(mean=tuple(map(float, mean)), std=tuple(map(float, std)), resize_mode=mode,
                          interpolation=_RESAMPLE[resample], crop_rounding="floor")
