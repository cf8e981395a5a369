"""Labelled images for classification: one ``LabelledImages`` for every source.

``open_labelled(SPEC)`` reads

* a **class-per-folder** directory (the ImageNet / torchvision ImageFolder layout):
  ``SPEC/CLASS/*.png``; classes are the sub-folder names, sorted;
* a **CSV** file ``path,label`` (a header row ``path,label`` is optional; relative
  paths are relative to the CSV's folder);
* a **Hugging Face dataset** ``hf:SPEC[@SPLIT]`` with an image column and a label
  column (``label``, ``labels``, ``class``...: a ``ClassLabel`` gives its names):
  an image folder with class sub-folders, parquet files, webdataset shards, a
  ``save_to_disk`` directory or a Hub name (``vlm.data.hf.resolve_spec``).

Bad layouts are refused in one line (``ValueError`` naming the input): an empty
class folder, a single class, a CSV row without a label. Images that cannot be
read (missing, truncated, not an image) are skipped when loaded and counted in
``dataset.skips`` (``vlm.data.collate.SkipCounter``), as everywhere in vlm.

    ds = open_labelled("data/shapes_cls/train")
    ds.classes, len(ds), ds[0]            # ['blue circle', ...], 480, {"image": PIL, "label": 3, "path": ..., "index": 0}
    ds.with_transform(preprocess)         # items with image tensors, for a DataLoader (collate drops None)
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vlm.data.collate import SkipCounter, load_or_skip
from vlm.errors import first_line
from vlm.io.images import IMAGE_EXTENSIONS

LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "fine_label")


@dataclass
class LabelledImages:
    """``sources[i]`` (a path, or a row index into ``hf_rows``) has class ``targets[i]``."""

    classes: list  # class names, index = target
    sources: list  # image paths (str) or HF row indices (int)
    targets: list  # int class index per item
    name: str  # the spec, for messages
    hf_rows: Any = None  # the datasets.Dataset for hf: specs
    hf_image_column: Optional[str] = None
    transform: Optional[Callable] = None
    skips: SkipCounter = field(default_factory=SkipCounter)

    def __len__(self) -> int:
        return len(self.targets)

    def with_transform(self, transform: Callable) -> "LabelledImages":
        return LabelledImages(self.classes, self.sources, self.targets, self.name, self.hf_rows,
                              self.hf_image_column, transform)

    def source_name(self, i: int) -> str:
        s = self.sources[i]
        return s if isinstance(s, str) else f"{self.name}[{s}]"

    def load(self, i: int):
        """The decoded RGB image of item i (ImageLoadError when it cannot be read)."""
        from vlm.io.images import load_image

        s = self.sources[i]
        if isinstance(s, str):
            return load_image(s)
        return _decode_hf(self.hf_rows[s][self.hf_image_column], self.source_name(i))

    def __getitem__(self, i: int) -> Optional[dict]:
        image = load_or_skip(lambda: self.load(i), self.source_name(i), self.skips)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.targets[i], "path": self.source_name(i), "index": i}

    def remap(self, classes: Sequence[str], what: str = "the model") -> "LabelledImages":
        """The same items with targets indexing ``classes`` (e.g. a checkpoint's labels); a class of
        the data that is not among them is an error."""
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in self.classes if c not in index]
        if unknown:
            raise ValueError(f"{self.name}: class {unknown[0]!r} is not a label of {what} "
                             f"({len(classes)} labels: {', '.join(list(classes)[:5])}{', ...' if len(classes) > 5 else ''})")
        targets = [index[self.classes[t]] for t in self.targets]
        return LabelledImages(list(classes), self.sources, targets, self.name, self.hf_rows,
                              self.hf_image_column, self.transform)


def open_labelled(spec: str | os.PathLike, min_classes: int = 2) -> LabelledImages:
    """Open a class-per-folder directory, a ``path,label`` CSV or ``hf:SPEC[@SPLIT]``."""
    text = os.fspath(spec)
    if text.startswith("hf:"):
        ds = _open_hf(text[3:], text)
    elif text.lower().endswith(".csv"):
        ds = _open_csv(Path(text))
    elif os.path.isdir(text):
        ds = _open_folders(Path(text))
    elif os.path.exists(text):
        raise ValueError(f"{text}: not a class-per-folder directory, a .csv file or hf:DATASET")
    else:
        raise ValueError(f"{text}: no such file or directory")
    if len(ds.classes) < min_classes:
        raise ValueError(f"{text}: {len(ds.classes)} class{'es' if len(ds.classes) != 1 else ''} "
                         f"({', '.join(ds.classes) or 'none'}); classification needs at least {min_classes}")
    return ds


def _open_folders(root: Path) -> LabelledImages:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/CLASS/IMAGE files)")
    sources, targets = [], []
    for t, c in enumerate(classes):
        files = sorted(e.path for e in os.scandir(root / c)
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{root / c}: empty class folder (no images)")
        sources += files
        targets += [t] * len(files)
    return LabelledImages(classes, sources, targets, str(root))


def _open_csv(path: Path) -> LabelledImages:
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: unreadable CSV ({e})") from None
    start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"] else 0
    pairs = []
    for n, row in enumerate(rows[start:], start=start + 1):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{path}:{n}: expected 'path,label', got {','.join(row)!r}")
        p = Path(row[0].strip()).expanduser()
        pairs.append((str(p if p.is_absolute() else path.parent / p), row[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: no rows (expected path,label lines)")
    classes = sorted({label for _, label in pairs})
    index = {c: i for i, c in enumerate(classes)}
    return LabelledImages(classes, [p for p, _ in pairs], [index[lb] for _, lb in pairs], str(path))


def _open_hf(spec: str, name: str) -> LabelledImages:
    import datasets

    from vlm.data.hf import IMAGE_COLUMNS, resolve_spec

    spec, _, split = spec.partition("@")
    split = split or "train"
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")  # a save_to_disk directory
    if os.path.isdir(spec) and any((Path(spec) / f).is_file() for f in saved):
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{name}: no split {split!r} (it has {', '.join(ds)})")
            ds = ds[split]
    else:
        builder, kwargs = resolve_spec(spec, split)
        try:
            ds = datasets.load_dataset(builder, split=split, **kwargs)
        except ValueError as e:
            raise ValueError(f"{name}: {first_line(e)}") from None
    columns = list(ds.column_names)
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if label_col is None or image_col is None:
        missing = "label" if label_col is None else "image"
        raise ValueError(f"{name}: no {missing} column among {', '.join(columns)}")
    feature = ds.features[label_col]
    values = ds[label_col]
    if isinstance(feature, datasets.ClassLabel):
        classes, targets = list(feature.names), [int(v) for v in values]
    else:
        classes = sorted({str(v) for v in values})
        index = {c: i for i, c in enumerate(classes)}
        targets = [index[str(v)] for v in values]
    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # decoded (and failures counted) by vlm
    return LabelledImages(classes, list(range(len(ds))), targets, name, ds, image_col)


def _decode_hf(value, source: str):
    import io

    from vlm.io.images import ImageLoadError, load_image

    if isinstance(value, dict):
        if value.get("bytes"):
            from PIL import Image, UnidentifiedImageError

            try:
                return load_image(Image.open(io.BytesIO(value["bytes"])))
            except (UnidentifiedImageError, OSError) as e:
                raise ImageLoadError(source, f"not an image ({type(e).__name__})") from None
        value = value.get("path")
    if isinstance(value, str):
        return load_image(value)
    if value is None:
        raise ImageLoadError(source, "no image")
    return load_image(value)
