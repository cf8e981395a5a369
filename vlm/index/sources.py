"""What ``vlm index`` reads: image files and folders (recursively), and the dataset kinds
``vlm evaluate`` and training read, through the project's own readers:

* a COCO-format dataset dir (``annotations/captions.json`` + ``images/``, as ``vlm data shapes``
  writes) or a COCO captions file (``annotations/captions_val2017.json``): ``vlm.data.coco``;
* a Karpathy root (``dataset_coco.json``) or that file itself: every split;
* a Hugging Face image folder (``metadata.jsonl``), ``.parquet`` files or webdataset ``.tar``
  shards: ``vlm.data.hf``.

Each image becomes a ``Record``: a stable key (the absolute path, or ``SOURCE[row]`` for rows
inside a parquet/tar file), the file's size and mtime (a change re-embeds it), and a caption
when the source has one. Run: ``python -c "from vlm.index.sources import gather; print(gather(['examples']))"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from vlm.errors import UsageError, first_line


@dataclass(frozen=True)
class Record:
    key: str  # absolute file path, or "SOURCE[row]" for a row of a parquet/tar dataset
    size: int  # bytes of the file (of the whole dataset file for dataset rows)
    mtime: int  # st_mtime_ns of the same file
    caption: Optional[str] = None  # the source's caption (first reference), if it has one
    file: Optional[str] = None  # the image file to decode (None: a dataset row)
    row: int = -1  # row of ``dataset`` for dataset rows


@dataclass
class Gathered:
    records: list[Record]
    errors: list[str]  # "SOURCE: reason" lines for inputs that gave no image
    datasets: dict[str, Any]  # HF dataset objects by source name (rows refer to them)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _image_files(folder: Path) -> list[Path]:
    from vlm.io.images import folder_images  # the folder rule of vlm caption / classify too

    return [Path(p) for p in folder_images(folder)[0]]


def _file_record(path: Path, caption: Optional[str] = None) -> Optional[Record]:
    try:
        size, mtime = _stat(path)
    except OSError:
        return None
    key = str(path.resolve())
    return Record(key=key, size=size, mtime=mtime, caption=caption, file=key)


def _caption_index(ds) -> list[tuple[Path, str]]:
    return [(Path(ds.image_path(i)), ds.captions_for(i)[0]) for i in ds.image_ids()]


def _coco_file(path: Path) -> list[tuple[Path, str]]:
    from vlm.data.coco import KARPATHY_SPLITS, CocoCaptions
    from vlm.data.layout import open_karpathy

    data = json.loads(path.read_text())
    if isinstance(data, dict) and "annotations" in data:
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
        stem = path.stem.replace("captions_", "")  # captions_val2017 -> val2017
        images = root / stem if (root / stem).is_dir() else root / "images"
        return _caption_index(CocoCaptions(images, path, load_images=False))
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        pairs = []
        for split in KARPATHY_SPLITS:
            pairs += _caption_index(open_karpathy(path, path.parent, split, load_images=False,
                                                  include_restval=False))
        return pairs
    raise ValueError("not a COCO captions or Karpathy split file")


def _is_hf_source(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".parquet", ".tar")
    names = os.listdir(path)
    return any(n.endswith((".parquet", ".tar")) for n in names) or \
        any(n in ("metadata.jsonl", "metadata.csv") for n in names)


def _hf_rows(path: Path, datasets: dict) -> list[Record]:
    """Rows of a Hugging Face image folder / parquet / webdataset source."""
    from vlm.data.hf import caption_text, load_caption_dataset

    ds = load_caption_dataset(str(path))
    name = str(path.resolve())
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    mtime = max(p.stat().st_mtime_ns for p in files)
    folder = path.is_dir() and not any(p.suffix in (".parquet", ".tar") for p in files)
    caps = [caption_text(c) for c in ds.hf[ds.caption_column]]
    if folder:  # an image folder: its rows are real files, indexed by path
        records = []
        for row, value in enumerate(ds.hf[ds.image_column]):
            file = value.get("path") if isinstance(value, dict) else value
            rec = _file_record(Path(file), caps[row] or None) if file else None
            if rec is not None:
                records.append(rec)
        return records
    datasets[name] = ds
    return [Record(key=f"{name}[{row}]", size=size, mtime=mtime, caption=caps[row] or None, row=row)
            for row in range(len(ds))]


def gather(sources: Sequence[str]) -> Gathered:
    """Every image the sources name, deduplicated by key, sorted by key."""
    from vlm.data.layout import is_single_layout, open_caption_dir

    records: dict[str, Record] = {}
    errors: list[str] = []
    datasets: dict[str, Any] = {}
    if not sources:
        raise UsageError("no sources: give image files, folders or datasets to index")
    for src in sources:
        path = Path(src).expanduser()
        found: list[Record] = []
        try:
            if not path.exists():
                errors.append(f"{src}: no such file or directory")
                continue
            if path.is_dir() and (is_single_layout(path) or (path / "dataset_coco.json").is_file()):
                if (path / "dataset_coco.json").is_file():
                    pairs = _coco_file(path / "dataset_coco.json")
                else:
                    pairs = _caption_index(open_caption_dir(path, load_images=False))
                found = [r for r in (_file_record(p, c) for p, c in pairs) if r is not None]
                missing = len(pairs) - len(found)
                if missing:
                    errors.append(f"{src}: {missing} image file(s) named by the captions are missing")
            elif path.is_file() and path.suffix.lower() == ".json":
                pairs = _coco_file(path)
                found = [r for r in (_file_record(p, c) for p, c in pairs) if r is not None]
            elif _is_hf_source(path):
                found = _hf_rows(path, datasets)
            elif path.is_dir():
                found = [r for r in map(_file_record, _image_files(path)) if r is not None]
            else:
                rec = _file_record(path)
                found = [rec] if rec is not None else []
        except (ValueError, KeyError, OSError) as exc:
            errors.append(f"{src}: {first_line(exc)}")
            continue
        if not found:
            errors.append(f"{src}: no images found")
        for rec in found:
            records.setdefault(rec.key, rec)
    return Gathered(sorted(records.values(), key=lambda r: r.key), errors, datasets)
