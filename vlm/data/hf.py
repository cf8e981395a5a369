"""Image-caption data through Hugging Face ``datasets``.

``load_caption_dataset(spec, split="train", streaming=False)`` reads

* a local ``imagefolder``: a folder of images with ``metadata.jsonl`` (or
  ``metadata.csv``) giving ``file_name`` and a caption column;
* ``parquet`` files (an image column of ``{"bytes", "path"}`` structs, or of
  paths, plus a caption column);
* webdataset ``.tar`` shards (``xxx.jpg`` with ``xxx.txt`` and/or ``xxx.json``;
  every sample of a shard must have the same set of files);
* anything else ``datasets.load_dataset`` accepts, given as a dict
  (``{"path": "parquet", "data_files": {...}}``) or a Hub name.

``spec`` is a folder (its format is detected: ``.tar`` shards, else
``.parquet`` files, else an image folder), a file or glob (``.tar`` /
``.parquet``), ``"FORMAT:PATH"`` (``imagefolder:``, ``parquet:``,
``webdataset:``), a dict of ``load_dataset`` arguments, or a Hub dataset name.
The image and caption columns are detected unless named.

Map-style data comes back as an ``HFCaptionDataset`` and ``streaming=True`` as
a ``StreamingCaptionDataset`` (a torch ``IterableDataset``, for data that does
not fit on disk; HF shards it across DataLoader workers).  Both give the item
dicts of ``vlm.data.collate`` and ``None`` for an undecodable image or an empty
caption, counted in ``dataset.skips``::

    ds = load_caption_dataset("data/cc3m/", streaming=True, transform=preprocess)
    loader = DataLoader(ds, batch_size=256, collate_fn=collate, num_workers=4)

``datasets`` and ``torch`` are imported inside functions only, so importing
this module stays fast.
"""

from __future__ import annotations

import glob
import io
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from vlm.data.collate import SkipCounter, Tokenize, Transform, load_or_skip, make_item

FORMATS = ("imagefolder", "parquet", "webdataset")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_path", "file_name",
                 "filename", "filepath", "path")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt", "sentences", "sentence", "raw",
                   "alt_text", "alt", "description", "title", "json")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class UnknownSplitError(ValueError):
    """The dataset has no split of that name; ``available`` lists the ones it has (empty if unknown)."""

    def __init__(self, name: str, split: str, available: list[str]) -> None:
        self.split, self.available = split, list(available)
        has = f" (it has {', '.join(self.available)})" if self.available else ""
        super().__init__(f"dataset {name}: no split {split!r}{has}")


def _split_names(builder: str, kwargs: dict) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_split_names(
            builder, **{k: kwargs[k] for k in ("data_dir", "data_files") if k in kwargs}))
    except Exception:  # only for the error message: a Hub name offline, an odd builder
        return []


def resolve_spec(spec: str | os.PathLike | dict, split: str = "train") -> tuple[str, dict]:
    """``spec`` -> (``load_dataset`` path/builder, keyword arguments)."""
    if isinstance(spec, dict):
        kwargs = dict(spec)
        builder = kwargs.pop("path", None) or kwargs.pop("format", None) or kwargs.pop("builder", None)
        if not builder:
            raise ValueError(f"dataset spec {spec!r}: a dict needs a 'path' (or 'format') key")
        return str(builder), kwargs
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in FORMATS:
        return prefix, _location_kwargs(rest, split, prefix)
    if os.path.isdir(text):
        return _detect_folder_format(text), {"data_dir": text}
    if os.path.isfile(text) or glob.has_magic(text):
        return _format_from_suffix(text), _location_kwargs(text, split, None)
    if text.startswith((".", "/", "~")) or text.endswith((".tar", ".parquet")):
        raise FileNotFoundError(f"{text}: no such file or directory")
    return text, {}  # a Hub dataset name


def _location_kwargs(location: str, split: str, builder: Optional[str]) -> dict:
    if os.path.isdir(location):
        return {"data_dir": location}
    if not os.path.isfile(location) and not glob.has_magic(location):
        raise FileNotFoundError(f"{location}: no such file or directory")
    if glob.has_magic(location) and not glob.glob(location):
        raise FileNotFoundError(f"{location}: the pattern matches no files")
    return {"data_files": {split: location}}


def _format_from_suffix(path: str) -> str:
    if path.endswith(".tar"):
        return "webdataset"
    if path.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"{path}: cannot tell the format (expected .tar or .parquet; use 'FORMAT:PATH')")


def _detect_folder_format(folder: str) -> str:
    names: list[str] = []
    for entry in os.scandir(folder):
        if entry.is_file():
            names.append(entry.name)
        elif entry.is_dir():
            names.extend(e.name for e in os.scandir(entry.path) if e.is_file())
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if any(Path(n).suffix.lower() in _IMAGE_SUFFIXES for n in names):
        return "imagefolder"
    raise ValueError(f"{folder}: no .tar shards, .parquet files or images found")


def _pick(columns: list[str], wanted: tuple[str, ...], exclude: set[str]) -> Optional[str]:
    lower = {c.lower(): c for c in columns if c not in exclude}
    for name in wanted:
        if name in lower:
            return lower[name]
    return None


def detect_columns(
    features: Any, columns: list[str], first_row: Optional[dict] = None
) -> tuple[Optional[str], Optional[str]]:
    """Guess (image column, caption column) from HF features, names and a sample row."""
    from datasets import Image, Value

    image_col = None
    if features:
        image_col = next((c for c in columns if isinstance(features.get(c), Image)), None)
    if image_col is None and first_row is not None:
        image_col = next((c for c in columns if _looks_like_image(first_row.get(c))), None)
    image_col = image_col or _pick(columns, IMAGE_COLUMNS, set())
    caption_col = _pick(columns, CAPTION_COLUMNS, {image_col} if image_col else set())
    if caption_col is None and features:
        caption_col = next(
            (c for c in columns
             if c != image_col and not c.startswith("__")
             and isinstance(features.get(c), Value) and features[c].dtype in ("string", "large_string")),
            None,
        )
    return image_col, caption_col


def _looks_like_image(value: Any) -> bool:
    if isinstance(value, dict) and "bytes" in value and "path" in value:
        return True
    return type(value).__module__.startswith("PIL")


def caption_text(value: Any) -> str:
    """A caption from a column value: str, bytes, list (first) or dict (webdataset .json)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        for v in value:
            text = caption_text(v)
            if text:
                return text
        return ""
    if isinstance(value, dict):
        for key in CAPTION_COLUMNS:
            if key in value:
                return caption_text(value[key])
        return ""
    return str(value).strip()


class _RowDecoder:
    """Turns one HF row into an item dict (or None), counting skips."""

    def __init__(
        self,
        image_column: str,
        caption_column: str,
        transform: Optional[Transform],
        tokenize: Optional[Tokenize],
        image_root: Optional[str],
        name: str,
    ) -> None:
        self.image_column = image_column
        self.caption_column = caption_column
        self.transform = transform
        self.tokenize = tokenize
        self.image_root = image_root
        self.name = name
        self.skips = SkipCounter()

    def __call__(self, row: dict, index: int) -> Optional[dict]:
        value = row.get(self.image_column)
        source = self._source(value, row, index)
        caption = caption_text(row.get(self.caption_column))
        if not caption:
            self.skips.record_skip(source, "empty caption")
            return None
        image = load_or_skip(lambda: self._load(value, source), source, self.skips)
        if image is None:
            return None
        return make_item(image, caption, index, source, self.transform, self.tokenize)

    def _source(self, value: Any, row: dict, index: int) -> str:
        if isinstance(value, dict) and value.get("path"):
            path = str(value["path"])
        elif isinstance(value, str):
            path = value
        else:
            path = f"{self.name}[{index}]"
        if "__url__" in row and "__key__" in row:
            path = f"{row['__url__']}:{row['__key__']}"
        return path

    def _load(self, value: Any, source: str):
        from PIL import Image

        from vlm.io.images import ImageLoadError, load_image

        if value is None:
            raise ImageLoadError(source, "no image in this row")
        if isinstance(value, dict):
            if value.get("bytes"):
                try:
                    opened = Image.open(io.BytesIO(value["bytes"]))
                except (OSError, ValueError, SyntaxError):
                    raise ImageLoadError(source, "not an image (cannot identify image format)") from None
                return load_image(opened)
            value = value.get("path")
            if not value:
                raise ImageLoadError(source, "image has neither bytes nor a path")
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            if self.image_root is not None and not path.is_absolute():
                path = Path(self.image_root) / path
            return load_image(path)
        return load_image(value)  # an already decoded PIL image


class _DecodedView:
    """What both dataset kinds expose of their row decoder: skip counts and column names."""

    _decode: _RowDecoder

    @property
    def skips(self) -> SkipCounter:
        return self._decode.skips

    @property
    def image_column(self) -> str:
        return self._decode.image_column

    @property
    def caption_column(self) -> str:
        return self._decode.caption_column


class HFCaptionDataset(_DecodedView):
    """Map-style image-caption dataset over a ``datasets.Dataset`` (a ``vlm.data.dataset.CaptionDataset``)."""

    is_stream = False

    def __init__(self, hf_dataset: Any, decoder: _RowDecoder) -> None:
        self.hf = hf_dataset
        self._decode = decoder

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int) -> Optional[dict]:
        return self._decode(self.hf[int(index)], int(index))

    def _first(self, limit: Optional[int]):
        return self.hf if limit is None else self.hf.select(range(min(limit, len(self.hf))))

    def captions(self, limit: Optional[int] = None) -> list[str]:
        """Every non-empty caption (of the first ``limit`` rows when given), read from the caption
        column alone (no image is decoded)."""
        return [c for c in map(caption_text, self._first(limit)[self.caption_column]) if c]

    def images(self, limit: Optional[int] = None) -> "HFCaptionDataset":
        """The first ``limit`` rows (one row is one image), sharing this dataset's skip count."""
        return self if limit is None else HFCaptionDataset(self._first(limit), self._decode)

    def __repr__(self) -> str:
        return (f"HFCaptionDataset({len(self)} rows, image={self.image_column!r}, "
                f"caption={self.caption_column!r})")


def _make_streaming_class() -> type:
    import torch.utils.data

    class StreamingCaptionDataset(_DecodedView, torch.utils.data.IterableDataset):
        """Iterable image-caption dataset over a streaming ``datasets.IterableDataset`` (a
        ``vlm.data.dataset.CaptionDataset`` with ``is_stream``)."""

        is_stream = True

        def __init__(self, hf_dataset: Any, decoder: _RowDecoder) -> None:
            super().__init__()
            self.hf = hf_dataset
            self._decode = decoder

        def shuffle(self, seed: int = 0, buffer_size: int = 1000) -> "StreamingCaptionDataset":
            """Shard order and a buffer of ``buffer_size`` rows shuffled (HF semantics)."""
            return type(self)(self.hf.shuffle(seed=seed, buffer_size=buffer_size), self._decode)

        def set_epoch(self, epoch: int) -> None:
            self.hf.set_epoch(epoch)

        def take(self, n: int) -> "StreamingCaptionDataset":
            """The first ``n`` rows of the stream."""
            return type(self)(self.hf.take(n), self._decode)

        def images(self, limit: Optional[int] = None) -> "StreamingCaptionDataset":
            """The first ``limit`` rows of the stream (one row is one image)."""
            return self if limit is None else self.take(limit)

        def captions(self, limit: Optional[int] = None) -> list[str]:
            """Non-empty captions of the first ``limit`` rows (all without a limit); no image
            is decoded, the rows are still read."""
            rows = self.hf.select_columns([self.caption_column]) if self.hf.features else self.hf
            rows = rows.take(limit) if limit is not None else rows
            return [c for c in (caption_text(row[self.caption_column]) for row in rows) if c]

        def __iter__(self) -> Iterator[Optional[dict]]:
            for index, row in enumerate(self.hf):
                yield self._decode(row, index)

        def __repr__(self) -> str:
            return (f"StreamingCaptionDataset(image={self.image_column!r}, "
                    f"caption={self.caption_column!r})")

    StreamingCaptionDataset.__module__ = __name__
    StreamingCaptionDataset.__qualname__ = "StreamingCaptionDataset"
    return StreamingCaptionDataset


def _streaming_class() -> type:
    cls = globals().get("StreamingCaptionDataset")
    if cls is None:
        cls = globals()["StreamingCaptionDataset"] = _make_streaming_class()
    return cls


def __getattr__(name: str) -> Any:
    # StreamingCaptionDataset subclasses torch's IterableDataset; it is built on
    # first use so that importing this module does not import torch.
    if name == "StreamingCaptionDataset":
        return _streaming_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_caption_dataset(
    spec: str | os.PathLike | dict,
    split: str = "train",
    streaming: bool = False,
    image_column: Optional[str] = None,
    caption_column: Optional[str] = None,
    *,
    transform: Optional[Transform] = None,
    tokenize: Optional[Tokenize] = None,
    image_root: Optional[str | os.PathLike] = None,
    **load_kwargs: Any,
) -> Any:
    """Load an image-caption dataset; see the module docstring for ``spec``.

    Returns an ``HFCaptionDataset`` (map-style) or, with ``streaming=True``, a
    ``StreamingCaptionDataset``; ``UnknownSplitError`` (a ValueError listing the
    splits there are) when the dataset has no ``split``.  ``image_root`` resolves relative image paths
    stored in a string column.  Extra keyword arguments go to
    ``datasets.load_dataset`` (e.g. ``cache_dir``).  Raises ValueError naming
    the spec when the columns cannot be found.
    """
    import datasets

    builder, kwargs = resolve_spec(spec, split)
    kwargs.update(load_kwargs)
    name = spec if isinstance(spec, str) else builder
    try:
        ds = datasets.load_dataset(builder, split=split, streaming=streaming, **kwargs)
    except ValueError as e:
        if not str(e).startswith(("Unknown split", "Bad split")):  # map-style, streaming
            raise
        raise UnknownSplitError(str(name), split, _split_names(builder, kwargs)) from None

    columns = list(ds.column_names or [])
    first_row = None
    if not columns or not ds.features:
        first_row = next(iter(ds), None)
        if first_row is None:
            raise ValueError(f"dataset {name}: split {split!r} is empty")
        columns = list(first_row)
    found_image, found_caption = detect_columns(ds.features, columns, first_row)
    for kind, given in (("image", image_column), ("caption", caption_column)):
        if given is not None and given not in columns:
            raise ValueError(f"dataset {name}: no {kind} column {given!r} (columns: {', '.join(columns)})")
    image_column = image_column or found_image
    caption_column = caption_column or found_caption
    if image_column is None or caption_column is None:
        missing = "image" if image_column is None else "caption"
        raise ValueError(
            f"dataset {name}: cannot find the {missing} column among {', '.join(columns)}; "
            f"pass {missing}_column="
        )
    if ds.features and isinstance(ds.features.get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decode ourselves
    keep = [c for c in (image_column, caption_column, "__key__", "__url__") if c in columns]
    if ds.features:
        ds = ds.select_columns(keep)
    if image_root is None and builder in ("imagefolder", "parquet") and "data_dir" in kwargs:
        image_root = kwargs["data_dir"]
    decoder = _RowDecoder(
        image_column, caption_column, transform, tokenize,
        os.fspath(image_root) if image_root is not None else None, str(name),
    )
    if streaming:
        return _streaming_class()(ds, decoder)
    return HFCaptionDataset(ds, decoder)


__all__ = [
    "HFCaptionDataset",
    "StreamingCaptionDataset",
    "UnknownSplitError",
    "caption_text",
    "detect_columns",
    "load_caption_dataset",
    "resolve_spec",
]
