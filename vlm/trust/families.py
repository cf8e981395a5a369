"""Images that are not shapes scenes, made here or found inside installed packages: what the
out-of-distribution check (``vlm.trust.ood``) is validated on (scripts/calibrate_ood.py).

Procedural families (``FAMILIES``; each image depends only on ``(family, seed, i)``):

    white       uniform RGB noise                 pink, brown   1/f and 1/f^2 amplitude noise
    deadleaves  occluding discs with power-law radii (natural-image statistics; Lee et al. 2001)
    gradient    two-colour linear or radial ramps  gratings      sinusoidal gratings, colour pairs
    text        lines of text on a light page      blocks        coloured rectangles (Mondrian-like)

Each image is made at a random size (48..256 px), and a quarter of them are then blurred, cropped or
JPEG-compressed, so the family is not one scale or one codec. ``packaged_photos()`` gathers the
real photos and scans that ship inside scikit-image (``skimage.data``), matplotlib
(``sample_data``) and scikit-learn (``load_sample_images``) when they are installed;
``harder_variants()`` makes grey, tiny, blurred, cropped, compressed and faded copies of them.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WORDS = ("the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet data model image page "
         "report figure table result method 2024 page 17 section introduction").split()


def _spectral(rng: np.random.Generator, s: int, power: float) -> np.ndarray:
    f = np.sqrt(np.fft.fftfreq(s)[:, None] ** 2 + np.fft.fftfreq(s)[None, :] ** 2)
    amp = 1 / np.maximum(f, 1 / s) ** power
    chans = [np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((s, s))))) for _ in range(3)]
    img = np.stack(chans, -1)  # (s, s, 3)
    if rng.random() < 0.3:  # grayscale
        img = np.repeat(img[..., :1], 3, -1)
    return _to_uint8(img)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return ((img - img.min()) / max(float(np.ptp(img)), 1e-9) * 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def white(rng, s):
    return rng.integers(0, 256, (s, s, 3), dtype=np.uint8)


def pink(rng, s):
    return _spectral(rng, s, 1.0)


def brown(rng, s):
    return _spectral(rng, s, 2.0)


def deadleaves(rng, s):
    img = Image.new("RGB", (s, s), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(50, 300))):
        r = s * 0.01 / max(rng.random(), 0.01) ** (1 / 2)  # P(r) ~ 1/r^3
        x, y = rng.uniform(0, s, 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng))
    return np.asarray(img)


def gradient(rng, s):
    a, b = (np.array(_colour(rng), np.float32) for _ in range(2))
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1)
    if rng.random() < 0.5:
        t = np.clip(np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy, 0, 1)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(xx - cx, yy - cy) / 1.2, 0, 1)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def gratings(rng, s):
    a, b = (np.array(_colour(rng), np.float32) for _ in range(2))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(3, s / 2)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def text(rng, s):
    ink = tuple(int(v) for v in rng.integers(0, 80, 3))
    img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    step = int(rng.integers(10, 18))
    for y in range(int(rng.integers(2, 8)), s - 8, step):
        line = " ".join(rng.choice(WORDS, size=12))
        draw.text((int(rng.integers(2, 10)), y), line, fill=ink)
    return np.asarray(img)


def blocks(rng, s):
    img = Image.new("RGB", (s, s), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 30))):
        x0, y0 = rng.uniform(0, s, 2)
        w, h = rng.uniform(s * 0.05, s * 0.5, 2)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=_colour(rng))
    return np.asarray(img)


FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "white": white, "pink": pink, "brown": brown, "deadleaves": deadleaves, "gradient": gradient,
    "gratings": gratings, "text": text, "blocks": blocks,
}


def variant(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A blurred, cropped or JPEG-compressed copy (one of the three)."""
    kind = int(rng.integers(3))
    if kind == 0:
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    if kind == 1:
        w, h = img.size
        f = rng.uniform(0.4, 0.8)
        x, y = int(rng.uniform(0, w * (1 - f))), int(rng.uniform(0, h * (1 - f)))
        return img.crop((x, y, x + max(8, int(w * f)), y + max(8, int(h * f))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(10, 60)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def family_images(name: str, n: int, seed: int) -> list[Image.Image]:
    """``n`` images of procedural family ``name``; image i depends only on (name, seed, i)."""
    make = FAMILIES[name]
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, sorted(FAMILIES).index(name), i])
        img = Image.fromarray(make(rng, int(rng.integers(48, 257))), "RGB")
        out.append(variant(img, rng) if rng.random() < 0.25 else img)
    return out


def harder_variants(images: list[Image.Image]) -> dict[str, list[Image.Image]]:
    """Each image made harder to tell from a shapes scene: grey, 32 px, blurred, a 30% centre crop
    (mostly one surface), JPEG quality 10, 70% faded to grey."""

    def crop(img):
        w, h = img.size
        return img.crop((int(w * 0.35), int(h * 0.35), int(w * 0.65), int(h * 0.65)))

    def jpeg(img):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=10)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    make = {"grey": lambda i: i.convert("L").convert("RGB"), "32px": lambda i: i.resize((32, 32)),
            "blur": lambda i: i.filter(ImageFilter.GaussianBlur(3)), "crop30": crop, "jpeg10": jpeg,
            "faded": lambda i: Image.blend(i.convert("RGB"), Image.new("RGB", i.size, (128, 128, 128)), 0.7)}
    return {name: [f(img) for img in images] for name, f in make.items()}


def packaged_photos() -> dict[str, list[Image.Image]]:
    """Real photos and scans shipped inside installed packages, by package ({} for a missing one)."""
    found: dict[str, list[Image.Image]] = {}
    try:
        import skimage.data as sk
    except ImportError:
        sk = None
    if sk is not None:
        names = ("astronaut", "brick", "camera", "cat", "cell", "coffee", "coins", "grass", "gravel",
                 "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
                 "rocket", "text")
        imgs = [Image.fromarray(getattr(sk, n)()) for n in names if hasattr(sk, n)]
        left, _ = sk.stereo_motorcycle()[:2] if hasattr(sk, "stereo_motorcycle") else (None, None)
        if left is not None:
            imgs.append(Image.fromarray(left))
        found["skimage"] = imgs
        if hasattr(sk, "lfw_subset"):  # 200 face crops, 25 x 25 grayscale
            faces = sk.lfw_subset()[::10]
            found["skimage-lfw"] = [Image.fromarray((f * 255).astype(np.uint8)) for f in faces]
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            found["matplotlib"] = [Image.open(f).convert("RGB")]
    except (ImportError, OSError, ValueError):
        pass
    try:
        from sklearn.datasets import load_sample_images

        found["sklearn"] = [Image.fromarray(a) for a in load_sample_images().images]
    except (ImportError, OSError):
        pass
    return found
