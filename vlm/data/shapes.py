"""Procedural shape scenes written in the COCO captions format (offline data).

Each image shows 1-3 colored shapes (circle, square, triangle, star; red,
green, blue, yellow, purple, orange; small or large) on a low-saturation
background (plain, gradient, striped, checkered, noisy), with 5 captions from a
small fixed grammar that only names what the pixels show: color, shape, size,
relative position (from object centers), 3x3 region and background kind.
About half the images hold a single object; these also get a color+shape class
label for zero-shot classification.

Captions (5 distinct ones drawn from 6 forms per scene type; lower case, no
final period; "an" before "orange")::

    one object:  "a red circle", "a large red circle", "one red circle on a
                 striped background", "there is a large red circle on a striped
                 background", "a large red circle in the top left of the image",
                 "a picture of one red circle"
    two objects: "a large red circle to the left of a small blue star" (left /
                 right / above / below from the centers), its inverse, "a red
                 circle and a blue star [on a plain background]", "two shapes on
                 a plain background"; same class: "two red circles [side by side]"
    three:       "two red circles and a blue star", "a small red circle, a large
                 red circle and a small blue star from left to right", ...

Layout written by ``generate_shapes(out_dir, n, seed)``::

    out_dir/images/000001.png ...          RGB PNGs, image ids start at 1
    out_dir/annotations/captions.json      COCO captions (pycocotools loads it);
                                           each image entry also has "objects"
                                           and "background"
    out_dir/classes.json                   {"classes", "templates", "labels"}

Image ``i`` depends only on ``(seed, i)``, so outputs are byte-identical for a
given seed and a larger ``n`` extends a smaller one.

Run: ``vlm data shapes --out data/shapes --n 20000 --seed 0``
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlm.errors import InvalidOption

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 30),
    "purple": (145, 50, 195),
    "orange": (245, 140, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
DESCRIPTION = "vlm procedural shapes (vlm.data.shapes)"  # info.description of captions.json: a shapes set
_MARK = "vlm procedural shapes"
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "noisy")
CLASSES: list[str] = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
# Zero-shot prompts; article-free ("one {}") so "orange" needs no "an".
TEMPLATES: list[str] = ["one {}", "a picture of one {}"] + [
    f"one {{}} on a {bg} background" for bg in BACKGROUNDS
]

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-downsampled (anti-aliasing)
COLOR_JITTER = 12  # +- per RGB channel
# Object "radius" as a fraction of the image side; per-shape factors give the
# circumradius so that shapes of one size look equally big.
RADIUS_RANGE = {"small": (0.10, 0.12), "large": (0.18, 0.22)}
SHAPE_EXTENT = {"circle": 1.0, "square": 0.9 * math.sqrt(2), "triangle": 1.25, "star": 1.3}
MIN_CENTER_DISTANCE = 0.8  # x (sum of circumradii): limits overlap to ~10% of an object
NUM_OBJECTS_P = (0.5, 0.3, 0.2)  # probability of 1, 2, 3 objects
CAPTIONS_PER_IMAGE = 5


@dataclass
class ShapeObject:
    """One drawn object; geometry in output-image pixels."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float  # circumradius
    angle: float  # rotation in degrees
    rgb: tuple[int, int, int]

    @property
    def class_name(self) -> str:
        return f"{self.color} {self.shape}"

    def vertices(self, scale: float = 1.0) -> list[tuple[float, float]]:
        """Polygon vertices (squares, triangles, stars), scaled by ``scale``."""
        cx, cy = self.center
        r = self.radius
        if self.shape == "square":
            angles = [45 + 90 * k for k in range(4)]
            radii = [r] * 4
        elif self.shape == "triangle":
            angles = [-90 + 120 * k for k in range(3)]
            radii = [r] * 3
        elif self.shape == "star":
            angles = [-90 + 36 * k for k in range(10)]
            radii = [r if k % 2 == 0 else 0.5 * r for k in range(10)]
        else:
            raise ValueError(f"shape {self.shape!r}: has no polygon")
        out = []
        for a, rr in zip(angles, radii):
            t = math.radians(a + self.angle)
            out.append(((cx + rr * math.cos(t)) * scale, (cy + rr * math.sin(t)) * scale))
        return out

    def bbox(self, image_size: int) -> list[float]:
        """[x, y, w, h] clipped to the image, rounded to 0.01 px."""
        cx, cy = self.center
        if self.shape == "circle":
            xs, ys = [cx - self.radius, cx + self.radius], [cy - self.radius, cy + self.radius]
        else:
            pts = self.vertices()
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
        x1, y1 = min(float(image_size), max(xs)), min(float(image_size), max(ys))
        return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]

    def to_json(self, image_size: int) -> dict:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "bbox": self.bbox(image_size),
            "center": [round(self.center[0], 2), round(self.center[1], 2)],
        }


@dataclass
class Scene:
    """Objects (in drawing order) and the background kind of one image."""

    objects: list[ShapeObject]
    background: str


def _sample_classes(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    colors, shapes = list(COLORS), list(SHAPES)

    def one() -> tuple[str, str]:
        return colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]

    first = one()
    if k == 1:
        return [first]
    if k == 2:
        if rng.random() < 0.25:
            return [first, first]
        second = one()
        while second == first:
            second = one()
        return [first, second]
    u = rng.random()
    if u < 0.05:
        return [first] * 3
    if u < 0.30:
        other = one()
        while other == first:
            other = one()
        pair = [first, first, other]
        return [pair[i] for i in rng.permutation(3)]
    return [first, one(), one()]


def _placement_ok(
    centers: list[tuple[float, float]], radii: list[float], image_size: int
) -> bool:
    k = len(centers)
    for i in range(k):
        for j in range(i):
            if math.dist(centers[i], centers[j]) < MIN_CENTER_DISTANCE * (radii[i] + radii[j]):
                return False
    if k == 2:  # the relation must be clearly horizontal or vertical
        dx = abs(centers[0][0] - centers[1][0])
        dy = abs(centers[0][1] - centers[1][1])
        if max(dx, dy) < 1.5 * min(dx, dy):
            return False
    if k == 3:  # the left-to-right order must be clear
        xs = sorted(c[0] for c in centers)
        if min(xs[1] - xs[0], xs[2] - xs[1]) < 0.08 * image_size:
            return False
    return True


def sample_scene(rng: np.random.Generator, image_size: int = 64) -> Scene:
    """Draw a random scene: object classes, sizes, positions and background."""
    k = int(rng.choice(3, p=NUM_OBJECTS_P)) + 1
    classes = _sample_classes(rng, k)
    sizes = [SIZES[int(rng.integers(2))] for _ in range(k)]
    fractions = rng.random(k).tolist()
    jitters = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=(k, 3)).tolist()
    angles = rng.random(k).tolist()

    def radius(i: int) -> float:
        lo, hi = RADIUS_RANGE[sizes[i]]
        return (lo + (hi - lo) * fractions[i]) * image_size * SHAPE_EXTENT[classes[i][1]]

    radii = [radius(i) for i in range(k)]
    centers: list[tuple[float, float]] = []
    for attempt in range(1, 301):
        u = rng.random((k, 2)).tolist()
        centers = [
            (r + 1 + (image_size - 2 * r - 2) * ux, r + 1 + (image_size - 2 * r - 2) * uy)
            for r, (ux, uy) in zip(radii, u)
        ]
        if _placement_ok(centers, radii, image_size):
            break
        if attempt % 100 == 0 and "large" in sizes:  # crowded: shrink one large object
            sizes[sizes.index("large")] = "small"
            radii = [radius(i) for i in range(k)]

    objs = []
    for i, ((color, shape), size) in enumerate(zip(classes, sizes)):
        span = {"star": 72.0, "circle": 0.0}.get(shape, 40.0)
        angle = span * angles[i] - (20.0 if shape in ("square", "triangle") else 0.0)
        rgb = tuple(min(255, max(0, c + j)) for c, j in zip(COLORS[color], jitters[i]))
        objs.append(ShapeObject(shape, color, size, centers[i], radii[i], angle, rgb))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    # Large objects first so small ones are never hidden behind them.
    order = sorted(range(k), key=lambda i: (objs[i].size != "large", i))
    return Scene([objs[i] for i in order], background)


def _background(kind: str, rng: np.random.Generator, s: int) -> np.ndarray:
    """A low-saturation (grey-family) S x S x 3 uint8 background."""
    tint = rng.integers(-10, 11, size=3).astype(np.float32)
    g = float(rng.uniform(70, 190))
    axis = np.arange(s, dtype=np.int32)
    if kind == "plain":
        gray = np.full((s, s), g, np.float32)
    elif kind == "gradient":
        delta = float(rng.uniform(50, 100)) * (1 if g < 130 else -1)
        direction = int(rng.integers(4))
        ramp = axis.astype(np.float32) / (s - 1)
        if direction == 0:  # left to right
            t = np.broadcast_to(ramp[None, :], (s, s))
        elif direction == 1:  # top to bottom
            t = np.broadcast_to(ramp[:, None], (s, s))
        elif direction == 2:  # diagonal
            t = np.add.outer(ramp, ramp) / 2
        else:  # anti-diagonal
            t = np.add.outer(ramp[::-1], ramp) / 2
        gray = g + delta * t
    elif kind in ("striped", "checkered"):
        delta = float(rng.uniform(30, 50)) * (1 if g < 130 else -1)
        period = max(4, int(round(rng.uniform(0.09, 0.19) * s)))
        bands = (axis // period) % 2
        if kind == "checkered":
            on = np.bitwise_xor.outer(bands, bands)
        else:
            direction = int(rng.integers(3))
            if direction == 0:  # vertical stripes
                on = np.broadcast_to(bands[None, :], (s, s))
            elif direction == 1:  # horizontal stripes
                on = np.broadcast_to(bands[:, None], (s, s))
            else:  # diagonal stripes
                on = (np.add.outer(axis, axis) // max(2, period // 2)) % 2
        gray = g + delta * on.astype(np.float32)
    elif kind == "noisy":
        gray = g + 20 * rng.standard_normal((s, s), dtype=np.float32)
        tint = tint + 4 * rng.standard_normal((s, s, 3), dtype=np.float32)
    else:
        raise ValueError(f"background {kind!r}: not one of {BACKGROUNDS}")
    rgb = gray[..., None] + tint
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Render ``scene`` as an RGB image (shapes anti-aliased by 4x supersampling)."""
    bg = Image.fromarray(_background(scene.background, rng, image_size), "RGB")
    big = bg.resize((image_size * SUPERSAMPLE,) * 2, Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        if obj.shape == "circle":
            cx, cy, r = (v * SUPERSAMPLE for v in (*obj.center, obj.radius))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=obj.rgb)
        else:
            draw.polygon(obj.vertices(SUPERSAMPLE), fill=obj.rgb)
    return big.reduce(SUPERSAMPLE)


# ---------------------------------------------------------------- captions


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _short(o: ShapeObject) -> str:
    return f"{_a(o.color)} {o.color} {o.shape}"


def _full(o: ShapeObject) -> str:
    return f"{_a(o.size)} {o.size} {o.color} {o.shape}"


def _region(o: ShapeObject, image_size: int) -> str:
    col = min(2, int(3 * o.center[0] / image_size))
    row = min(2, int(3 * o.center[1] / image_size))
    vertical, horizontal = ("top", "", "bottom")[row], ("left", "", "right")[col]
    return f"{vertical} {horizontal}".strip() or "center"


def _count_phrase(count: int, cls: str) -> str:
    if count == 1:
        return f"{_a(cls)} {cls}"
    return f"{('two', 'three')[count - 2]} {cls}s"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _grouped(objs: list[ShapeObject]) -> str:
    """'two red circles and a blue star': classes counted, in the given order."""
    counts: dict[str, int] = {}
    for o in objs:
        counts[o.class_name] = counts.get(o.class_name, 0) + 1
    return _join([_count_phrase(c, cls) for cls, c in counts.items()])


def caption_pool(scene: Scene, image_size: int = 64) -> list[str]:
    """Every caption the grammar allows for ``scene`` (at least 6, all distinct)."""
    objs = scene.objects
    bg = f"on a {scene.background} background"
    if len(objs) == 1:
        o = objs[0]
        return [
            _short(o),
            _full(o),
            f"one {o.class_name} {bg}",
            f"there is {_full(o)} {bg}",
            f"{_full(o)} in the {_region(o, image_size)} of the image",
            f"a picture of one {o.class_name}",
        ]
    if len(objs) == 2:
        p, q = objs
        dx, dy = q.center[0] - p.center[0], q.center[1] - p.center[1]
        if abs(dx) >= abs(dy):
            a, b = (p, q) if dx > 0 else (q, p)
            rel, inv, arrangement = "to the left of", "to the right of", "side by side"
        else:
            a, b = (p, q) if dy > 0 else (q, p)
            rel, inv, arrangement = "above", "below", "one above the other"
        if a.class_name == b.class_name:
            plural = f"{a.class_name}s"
            return [
                f"two {plural}",
                f"two {plural} {bg}",
                f"{_full(a)} {rel} {_full(b)}",
                f"two {plural} {arrangement}",
                f"{_full(b)} {inv} {_full(a)}",
                f"there are two {plural}",
            ]
        return [
            f"{_full(a)} {rel} {_full(b)}",
            f"{_full(b)} {inv} {_full(a)}",
            f"{_short(a)} and {_short(b)}",
            f"{_short(a)} {rel} {_short(b)}",
            f"{_short(a)} and {_short(b)} {bg}",
            f"two shapes {bg}",
        ]
    ordered = sorted(objs, key=lambda o: o.center[0])
    return [
        _grouped(ordered),
        _join([_full(o) for o in ordered]) + " from left to right",
        f"{_grouped(ordered)} {bg}",
        f"three shapes {bg}",
        f"{_full(ordered[0])} to the left of {_grouped(ordered[1:])}",
        _join([_short(o) for o in ordered]) + " from left to right",
    ]


def scene_captions(scene: Scene, rng: np.random.Generator, image_size: int = 64) -> list[str]:
    """5 distinct captions drawn from ``caption_pool`` (in pool order)."""
    pool = caption_pool(scene, image_size)
    keep = sorted(rng.choice(len(pool), size=CAPTIONS_PER_IMAGE, replace=False).tolist())
    return [pool[i] for i in keep]


# ---------------------------------------------------------------- writer


def check_counts(n, seed, image_size) -> None:
    """``InvalidOption`` unless n >= 1, seed >= 0 and image_size >= 32 are integers."""
    if not isinstance(n, int) or n < 1:
        raise InvalidOption("n", n, "must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidOption("seed", seed, "must be a non-negative integer")
    if not isinstance(image_size, int) or image_size < 32:
        raise InvalidOption("image_size", image_size, "must be an integer >= 32")


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 array as an 8-bit RGB PNG (no filtering, zlib ``level``).

    About 3x faster than PIL's encoder for small images, and byte-stable.
    """
    h, w, _ = rgb.shape
    rows = np.zeros((h, w * 3 + 1), np.uint8)  # each row: filter type 0, then pixels
    rows[:, 1:] = rgb.reshape(h, w * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolor, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b""))


__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "COLORS",
    "DESCRIPTION",
    "SHAPES",
    "SIZES",
    "TEMPLATES",
    "Scene",
    "ShapeObject",
    "caption_pool",
    "png_bytes",
    "render_scene",
    "sample_scene",
    "scene_captions",
]
