"""Image loading and CLIP-style preprocessing.

``load_image`` turns a path (or an in-memory PIL image) into a fully decoded
8-bit RGB image: EXIF orientation applied, transparency composited onto
white, 16-bit data scaled (not clipped) to 8 bit, the first frame of an
animation.  Every failure is an ``ImageLoadError`` whose text is one line,
``"<input>: <reason>"``, fit to print straight to a user.

``preprocess`` reproduces open_clip's eval transform
(``open_clip.transform.image_transform(S, is_train=False, ...)``) with PIL
alone: same output-size rounding, same crop offsets, same float32 arithmetic,
so tensors are bit-identical for RGB input in the "shortest" and "squash"
resize modes (and "longest", which pads with black).

Only stdlib, numpy and PIL are imported at module load; torch is imported
inside the functions that build tensors.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import stat
import struct
import warnings
import zlib
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The one preprocessing dataclass is the model config's preprocess section (vlm.model.config).
from vlm.model.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, RESIZE_MODES, PreprocessConfig  # noqa: F401
from vlm.errors import ImageLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "PreprocessConfig",
    "as_image_list",
    "collect_images",
    "load_image",
    "preprocess",
    "preprocess_batch",
]

#: File suffixes (lower case, with the dot) that ``collect_images`` picks up
#: when it expands a directory.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
)

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

_EXIF_ORIENTATION = 0x0112

# Exceptions Pillow's decoders raise on damaged data (besides OSError).
_CORRUPT_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, zlib.error)


# ----------------------------------------------------------------------------- loading


def _bomb_reason(exc: BaseException) -> str:
    """Reason text for a decompression-bomb error/warning raised by Pillow."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    limit = Image.MAX_IMAGE_PIXELS
    if match and limit:
        return (
            f"image too large ({match.group(1)} pixels exceeds the "
            f"{limit}-pixel decompression-bomb limit)"
        )
    return "image too large (exceeds the decompression-bomb limit)"


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 (rounding), the inverse of the usual x*257."""
    arr = np.clip(arr.astype(np.float64), 0, 65535)
    return np.rint(arr / 257.0).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited onto white)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        # "I;16*" is 16-bit by definition.  32-bit "I" has no recorded bit
        # depth: data that goes above 255 is taken as 16-bit, else as 8-bit.
        if mode == "I" and arr.size and int(arr.max()) <= 255:
            gray = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            gray = _scale_16bit(arr)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.max() <= 1.0:
            arr = arr * 255.0
        gray = np.rint(np.clip(np.nan_to_num(arr), 0, 255)).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _finish(img: Image.Image, label: str) -> Image.Image:
    """EXIF-transpose and convert a loaded image; conversion errors become ImageLoadError."""
    try:
        # Check the tag first: exif_transpose copies the image even when
        # there is nothing to do.
        if img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
            img = ImageOps.exif_transpose(img)
    except _CORRUPT_ERRORS:
        pass  # unreadable EXIF block: keep the pixels as stored
    try:
        return _to_rgb(img)
    except (ValueError, OSError) as exc:
        raise ImageLoadError(label, f"unsupported image mode {img.mode!r} ({exc})") from None


def load_image(src: str | os.PathLike | Image.Image) -> Image.Image:
    """Load ``src`` as a fully decoded 8-bit RGB ``PIL.Image.Image``.

    Accepts a path or an already-open PIL image.  Handles JPEG, PNG, WebP,
    GIF (first frame), TIFF and BMP; grayscale, 16-bit, palette, CMYK and
    alpha modes; EXIF orientation.  Raises ``ImageLoadError`` on any failure.
    """
    if isinstance(src, Image.Image):
        label = str(getattr(src, "filename", "") or "<PIL.Image>")
        try:
            src.load()
        except _CORRUPT_ERRORS:
            raise ImageLoadError(label, "truncated or corrupt image data") from None
        return _finish(src, label)

    label = os.fspath(src)
    if isinstance(label, bytes):
        label = os.fsdecode(label)
    try:
        info = os.stat(label)
        if stat.S_ISDIR(info.st_mode):
            raise ImageLoadError(label, "is a directory, not an image file")
        if stat.S_ISREG(info.st_mode) and info.st_size == 0:
            raise ImageLoadError(label, "file is empty (0 bytes)")
        with open(label, "rb") as fh, warnings.catch_warnings():
            if not stat.S_ISREG(info.st_mode):  # a pipe (/dev/stdin, <(...)): read it, up to a limit
                fh = _read_stream(fh, label)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(fh)
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageLoadError(label, _bomb_reason(exc)) from None
            except UnidentifiedImageError:
                raise ImageLoadError(label, "not an image file (cannot identify image format)") from None
            except _CORRUPT_ERRORS:
                raise ImageLoadError(label, "truncated or corrupt image data") from None
            return _finish(img, label)
    except FileNotFoundError:
        raise ImageLoadError(label, _missing_reason(label)) from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory, not an image file") from None
    except ImageLoadError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(label, SYMLINK_LOOP) from None
        raise ImageLoadError(label, exc.strerror or str(exc) or type(exc).__name__) from None


#: Largest image accepted from a pipe or other stream, which has no size to check up front.
MAX_STREAM_BYTES = 256 * 1024 * 1024
SYMLINK_LOOP = "symbolic link loop (too many levels of symbolic links)"


def _read_stream(fh, label: str) -> io.BytesIO:
    data = fh.read(MAX_STREAM_BYTES + 1)
    if not data:
        raise ImageLoadError(label, "no data (an empty pipe or stream)")
    if len(data) > MAX_STREAM_BYTES:
        raise ImageLoadError(label, f"stream larger than {MAX_STREAM_BYTES // 2**20} MB")
    return io.BytesIO(data)


def _missing_reason(path: str) -> str:
    """Why a path does not resolve: missing, a dangling symbolic link, or a symbolic link loop."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return SYMLINK_LOOP
        return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return "no such file or directory"


def as_image_list(images: Any, what: str = "images") -> list:
    """``images`` as a list of paths / PIL images: a single path or image is one input.

    A string is never iterated character by character. Anything else that is not a path, a
    PIL image or a list of them raises ``TypeError`` naming the position and the type, before
    any image is read.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (bytes, bytearray)):
        raise TypeError(f"{what}: got {type(images).__name__}; pass a path, a PIL image or a list of them "
                        f"(encoded image data: PIL.Image.open(io.BytesIO(data)))")
    if isinstance(images, dict) or not hasattr(images, "__iter__"):
        raise TypeError(f"{what}: expected a path, a PIL image or a list of them, got {type(images).__name__}")
    items = list(images)
    for n, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, Image.Image)):
            hint = " (convert an array with PIL.Image.fromarray)" if hasattr(item, "__array__") else ""
            raise TypeError(f"{what}[{n}]: expected a path or a PIL image, got {type(item).__name__}{hint}")
    return items


def folder_images(folder) -> tuple[list[str], list[str]]:
    """(image files, broken links) under ``folder``, recursively: the one way vlm reads a folder
    (``vlm caption``/``classify``/``similarity`` and ``vlm index``). Files whose suffix is in
    ``IMAGE_EXTENSIONS`` (case-insensitive), hidden files and folders (a leading ".") skipped,
    symbolic links to folders not followed; sorted by name within a folder, a folder's files before
    its sub-folders' (``a.png``, ``b.png``, ``cats/c.png``). Broken links: dangling symbolic links and
    link loops with an image suffix. An unreadable ``folder`` raises ``OSError``."""
    found: list[str] = []
    bad: list[str] = []

    def fail(exc: OSError):
        if os.path.normpath(exc.filename or "") == os.path.normpath(os.fspath(folder)):
            raise exc  # the folder itself; an unreadable sub-folder is left out

    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                found.append(path)
            elif os.path.islink(path) and not os.path.exists(path):  # a loop or a dangling link
                bad.append(path)
    return found, bad


def collect_images(inputs: Sequence[str]) -> tuple[list[str], list[ImageLoadError]]:
    """Expand ``inputs`` into image paths, in input order.

    A directory contributes its image files, recursively (``folder_images``: the same files
    ``vlm index`` reads).  A file is kept as given whatever its suffix (pipes such as
    ``/dev/stdin`` too).  Missing paths, dangling symbolic links and symbolic link loops (also
    inside a directory) and image-less directories are returned as errors rather than raised.
    """
    paths: list[str] = []
    errors: list[ImageLoadError] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            try:
                found, broken = folder_images(item)
            except OSError as exc:
                errors.append(ImageLoadError(item, exc.strerror or "cannot list directory"))
                continue
            bad = [ImageLoadError(path, _missing_reason(path)) for path in broken]
            if found or bad:
                paths.extend(found)
                errors.extend(bad)
            else:
                errors.append(ImageLoadError(item, "directory contains no images"))
        elif os.path.exists(item):
            paths.append(item)
        else:
            errors.append(ImageLoadError(item, _missing_reason(item)))
    return paths, errors


# ----------------------------------------------------------------------------- preprocessing


def _shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after scaling the shorter side to ``size``; long side truncated like torchvision."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _longest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after scaling the longer side to ``size``; Python round() like open_clip."""
    ratio = max(height / size, width / size)
    return round(width / ratio), round(height / ratio)


def _resize(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    return img if img.size == size else img.resize(size, resample)


def _center_crop(img: Image.Image, size: int, rounding: str = "round") -> Image.Image:
    """Crop a size x size square; offsets round half to even as torchvision does
    (``rounding="floor"``: rounded down, as Hugging Face image processors do)."""
    width, height = img.size
    if width < size or height < size:
        img = _pad_center(img, size)
        width, height = img.size
        if (width, height) == (size, size):
            return img
    if rounding == "floor":
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top = int(round((height - size) / 2.0))
        left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _pad_center(img: Image.Image, size: int) -> Image.Image:
    """Pad with black to at least size x size (extra pixel on the right/bottom)."""
    width, height = img.size
    new_w, new_h = max(width, size), max(height, size)
    left = (size - width) // 2 if size > width else 0
    top = (size - height) // 2 if size > height else 0
    canvas = Image.new(img.mode, (new_w, new_h), 0)
    canvas.paste(img, (left, top))
    return canvas


def _size(cfg: PreprocessConfig) -> int:
    if cfg.image_size is None:
        raise ValueError("PreprocessConfig.image_size is not set: build it with PreprocessConfig.for_model(model_cfg) "
                         "or give image_size")
    return cfg.image_size


def _resized_square(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size = _size(cfg)
    scale = size if cfg.crop_pct == 1.0 else math.floor(size / cfg.crop_pct)  # timm: floor(size / crop_pct)
    resample = RESAMPLING[cfg.interpolation]
    width, height = img.size
    if cfg.resize_mode == "squash":
        img = _resize(img, (scale, scale), resample)
        return img if scale == size else _center_crop(img, size, cfg.crop_rounding)
    if cfg.resize_mode == "longest":
        img = _resize(img, _longest_side_size(width, height, scale), resample)
        return _center_crop(img, size, cfg.crop_rounding)
    img = _resize(img, _shortest_side_size(width, height, scale), resample)
    return _center_crop(img, size, cfg.crop_rounding)


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> "torch.Tensor":
    """Image -> normalized float32 tensor of shape (3, S, S).

    Non-RGB images are first converted as ``load_image`` does (alpha over
    white, 16-bit scaled); open_clip instead resizes in the original mode and
    converts afterwards, so parity is exact for RGB input only.
    """
    import torch

    if image.mode != "RGB":
        image = _to_rgb(image)
    square = _resized_square(image, cfg)
    arr = np.array(square, dtype=np.uint8)  # (S, S, 3), writable copy
    tensor = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def preprocess_batch(images: Iterable[Image.Image], cfg: PreprocessConfig) -> "torch.Tensor":
    """Preprocess several images into one (B, 3, S, S) float32 tensor."""
    import torch

    tensors = [preprocess(img, cfg) for img in images]
    if not tensors:
        return torch.empty(0, 3, _size(cfg), _size(cfg), dtype=torch.float32)
    return torch.stack(tensors)
