"""Request objects for the serve backend, and the limits checked when they are built.

Every ``*Request`` holds already-validated values: decoded RGB images, checked labels, a checked
``GenerationConfig``. Build them with the ``parse_*`` functions from a JSON-like dict (the HTTP
layer adds decoded uploads as ``images``); a bad field raises ``RequestError`` naming it::

    req = parse_caption({"images": [("cat.jpg", pil_image)], "options": {"beams": 3}}, limits)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import warnings
from dataclasses import dataclass
from typing import Any, Optional


class RequestError(ValueError):
    """A bad request: ``field`` names the input, ``status`` is the HTTP status to answer with."""

    def __init__(self, field: str, reason: str, status: int = 400):
        super().__init__(f"{field}: {reason}")
        self.field, self.status = field, status


@dataclass(frozen=True)
class Limits:
    max_body: int = 20 << 20  # bytes per request body (413 above)
    max_images: int = 16  # images per request
    max_texts: int = 64  # texts per request
    max_labels: int = 1000  # labels per classify request
    max_text_chars: int = 1000  # characters per text or label
    max_k: int = 1000  # search results per query
    max_queue: int = 256  # requests waiting for the model (429 above)
    timeout_s: float = 60.0  # per-request wait for the model (503 after)


@dataclass(frozen=True)
class CaptionRequest:
    names: tuple  # one name per image (the upload's file name, or "images[i]")
    images: tuple  # decoded RGB PIL images
    config: Any  # vlm.generation.GenerationConfig, validated

    def batch_key(self):
        return ("caption", repr(self.config))


@dataclass(frozen=True)
class ClassifyRequest:
    names: tuple
    images: tuple
    labels: tuple
    templates: Optional[tuple]
    top_k: int

    def batch_key(self):
        return ("classify", self.labels, self.templates)


@dataclass(frozen=True)
class EmbedRequest:
    names: tuple
    images: tuple
    texts: tuple

    def batch_key(self):
        return ("embed",)


@dataclass(frozen=True)
class SearchRequest:
    k: int
    index: Optional[str] = None  # index name; None: the only one served
    text: Optional[str] = None
    image: Any = None  # a decoded PIL image
    vector: Optional[tuple] = None  # an embedding (L2-normalised by the backend)
    name: str = ""


def decode_image(data: bytes, field: str):
    """Decoded RGB PIL image of uploaded bytes, under the CLI's pixel cap (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    from vlm.io.images import _bomb_reason, load_image

    if not data:
        raise RequestError(field, "empty image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError(field, _bomb_reason(exc), 413) from None
        except UnidentifiedImageError:
            raise RequestError(field, "not an image (cannot identify image format)") from None
        except Exception:
            raise RequestError(field, "truncated or corrupt image data") from None
    from vlm.errors import ImageLoadError

    try:
        return load_image(img)
    except ImageLoadError as e:
        raise RequestError(field, e.reason) from None


def decode_base64_image(value: Any, field: str):
    if not isinstance(value, str):
        raise RequestError(field, f"expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "not valid base64") from None
    return decode_image(data, field)


def _images(body: dict, limits: Limits, required: bool = True) -> tuple[tuple, tuple]:
    """(names, images) from ``body["images"]``: (name, PIL) pairs or base64 strings."""
    raw = body.get("images", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise RequestError("images", "expected a list of base64 strings")
    if required and not raw:
        raise RequestError("images", "no image given")
    if len(raw) > limits.max_images:
        raise RequestError("images", f"{len(raw)} images; at most {limits.max_images} per request", 413)
    names, images = [], []
    for n, item in enumerate(raw):
        if isinstance(item, tuple):
            names.append(item[0])
            images.append(item[1])
        else:
            names.append(f"images[{n}]")
            images.append(decode_base64_image(item, f"images[{n}]"))
    return tuple(names), tuple(images)


def _texts(raw: Any, field: str, cap: int, limits: Limits) -> tuple:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise RequestError(field, "expected a list of strings")
    if len(raw) > cap:
        raise RequestError(field, f"{len(raw)} given; at most {cap} per request", 413)
    for n, t in enumerate(raw):
        if not isinstance(t, str):
            raise RequestError(f"{field}[{n}]", f"expected a string, got {type(t).__name__}")
        if len(t) > limits.max_text_chars:
            raise RequestError(f"{field}[{n}]", f"{len(t)} characters; at most {limits.max_text_chars}", 413)
    return tuple(raw)


def _int(body: dict, field: str, default: int, low: int, high: int) -> int:
    raw = body.get(field, default)
    try:
        value = int(raw)
        if isinstance(raw, bool) or (isinstance(raw, float) and raw != value):
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(field, f"{raw!r}: not a whole number") from None
    if not low <= value <= high:
        raise RequestError(field, f"{value}: must be between {low} and {high}")
    return value


def parse_caption(body: dict, limits: Limits, pipeline) -> CaptionRequest:
    from vlm.errors import VlmError
    from vlm.generation.config import GenerationConfig

    options = body.get("options", {})
    if not isinstance(options, dict):
        raise RequestError("options", "expected an object of GenerationConfig fields")
    known = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    for key in options:
        if key not in known:
            raise RequestError(f"options.{key}", f"unknown option (known: {', '.join(known)})")
    try:
        cfg = pipeline.generation_config(**options)
    except (VlmError, TypeError, ValueError) as e:
        field = next((f"options.{k}" for k in options if k in str(e)), "options")
        raise RequestError(field, str(e)) from None
    names, images = _images(body, limits)
    return CaptionRequest(names, images, cfg)


def parse_classify(body: dict, limits: Limits) -> ClassifyRequest:
    from vlm.classify.prompts import check_labels, check_templates
    from vlm.errors import VlmError

    labels = _texts(body.get("labels", []), "labels", limits.max_labels, limits)
    if not labels:
        raise RequestError("labels", "no labels given")
    try:
        labels = tuple(check_labels(list(labels)))
    except (VlmError, ValueError) as e:
        raise RequestError("labels", str(e)) from None
    templates = body.get("templates")
    if templates is not None:
        templates = _texts(templates, "templates", limits.max_labels, limits)
        try:
            templates = tuple(check_templates(list(templates)))
        except (VlmError, ValueError) as e:
            raise RequestError("templates", str(e)) from None
    top_k = _int(body, "top_k", 5, 1, limits.max_labels)
    names, images = _images(body, limits)
    return ClassifyRequest(names, images, labels, templates, top_k)


def parse_embed(body: dict, limits: Limits) -> EmbedRequest:
    texts = _texts(body.get("texts", []), "texts", limits.max_texts, limits)
    names, images = _images(body, limits, required=False)
    if not texts and not images:
        raise RequestError("images", "give images and/or texts to embed")
    return EmbedRequest(names, images, texts)


def parse_search(body: dict, limits: Limits) -> SearchRequest:
    k = _int(body, "k", 10, 1, limits.max_k)
    index = body.get("index")
    if index is not None and not isinstance(index, str):
        raise RequestError("index", "expected an index name")
    text, vector, image, name = body.get("q", body.get("text")), body.get("embedding"), None, ""
    if "image" in body:
        image = body["image"]
        if isinstance(image, tuple):
            name, image = image
        else:
            name, image = "image", decode_base64_image(image, "image")
    given = [x is not None for x in (text, image, vector)]
    if sum(given) != 1:
        raise RequestError("q", "give exactly one of q (text), image or embedding")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise RequestError("q", "empty query; give some words to search for")
        if len(text) > limits.max_text_chars:
            raise RequestError("q", f"{len(text)} characters; at most {limits.max_text_chars}", 413)
        name = text
    if vector is not None:
        if not isinstance(vector, list) or not vector or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise RequestError("embedding", "expected a list of numbers")
        if len(vector) > 65536:
            raise RequestError("embedding", "too many dimensions", 413)
        vector, name = tuple(float(v) for v in vector), "embedding"
    return SearchRequest(k=k, index=index, text=text, image=image, vector=vector, name=name)
