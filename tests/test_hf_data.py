"""Tests for Hugging Face ``datasets`` caption loading (vlm.data.hf).

Every source is built in tmp_path (no network): an image folder with
metadata.jsonl, a parquet file, webdataset tar shards; each holds one
undecodable image that must be skipped and counted.

Run: pytest tests/test_hf_data.py
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("datasets")

from vlm.data.collate import SkipCounter, collate  # noqa: E402
from vlm.data.hf import caption_text, load_caption_dataset, resolve_spec  # noqa: E402


def _image_bytes(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    root.mkdir()
    (root / "red.png").write_bytes(_image_bytes((255, 0, 0)))
    (root / "green.png").write_bytes(_image_bytes((0, 255, 0)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    rows = [("red.png", "a red image"), ("green.png", "a green image"), ("broken.png", "broken")]
    (root / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f, "caption": c}) + "\n" for f, c in rows)
    )
    return root


@pytest.fixture()
def parquet_file(tmp_path: Path) -> Path:
    import datasets

    features = datasets.Features({"img": datasets.Image(), "text": datasets.Value("string"),
                                  "score": datasets.Value("float32")})
    data = datasets.Dataset.from_dict(
        {
            "img": [{"bytes": _image_bytes((0, 0, 255), "JPEG"), "path": None},
                    {"bytes": b"junk bytes", "path": None},
                    {"bytes": _image_bytes((9, 9, 9)), "path": None}],
            "text": ["a blue image", "junk", "a dark image"],
            "score": [0.1, 0.2, 0.3],
        },
        features=features,
    )
    path = tmp_path / "pq" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    data.to_parquet(str(path))
    return path


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    root = tmp_path / "wds"
    root.mkdir()
    samples = [
        [("s0", (255, 0, 0), "a red sample"), ("s1", (0, 255, 0), "a green sample")],
        [("s2", None, "a broken sample"), ("s3", (0, 0, 255), "a blue sample")],
    ]
    for k, shard in enumerate(samples):
        with tarfile.open(root / f"shard-{k:05d}.tar", "w") as tar:
            for key, color, caption in shard:
                files = {
                    "jpg": _image_bytes(color, "JPEG") if color else b"not a jpeg",
                    "txt": caption.encode(),
                    "json": json.dumps({"caption": caption, "key": key}).encode(),
                }
                for ext, payload in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def _items(ds) -> list:
    return [ds[i] for i in range(len(ds))] if hasattr(ds, "__len__") else list(ds)


def test_imagefolder_with_metadata(imagefolder, tmp_path):
    ds = load_caption_dataset(imagefolder, cache_dir=str(tmp_path / "cache"))
    assert (ds.image_column, ds.caption_column) == ("image", "caption")
    items = _items(ds)
    ok = [it for it in items if it is not None]
    assert len(items) == 3 and len(ok) == 2
    assert {it["caption"] for it in ok} == {"a red image", "a green image"}
    assert all(it["image"].mode == "RGB" and it["image"].size == (8, 6) for it in ok)
    assert ds.skips.skipped == 1 and "broken.png" in ds.skips.examples[0]


def test_parquet_detects_columns_and_skips_junk(parquet_file, tmp_path):
    ds = load_caption_dataset(str(parquet_file), cache_dir=str(tmp_path / "cache"))
    assert (ds.image_column, ds.caption_column) == ("img", "text")
    items = _items(ds)
    assert [it is None for it in items] == [False, True, False]
    assert items[0]["image"].getpixel((0, 0))[2] > 200  # blue survived JPEG
    assert ds.skips.skipped == 1
    # the folder form, with explicit columns and a transform
    ds2 = load_caption_dataset(
        {"path": "parquet", "data_dir": str(parquet_file.parent)},
        image_column="img", caption_column="text", transform=lambda im: im.size,
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds2[2]["image"] == (8, 6)


def test_webdataset_shards_map_style(shards, tmp_path):
    ds = load_caption_dataset(shards, cache_dir=str(tmp_path / "cache"))
    assert ds.image_column == "jpg" and ds.caption_column == "txt"
    batch = collate(_items(ds))
    assert batch["batch_size"] == 3 and batch["num_skipped"] == 1
    assert batch["caption"] == ["a red sample", "a green sample", "a blue sample"]
    assert any("s2" in e for e in ds.skips.examples)
    json_captions = load_caption_dataset(
        str(shards / "shard-00000.tar"), caption_column="json", cache_dir=str(tmp_path / "cache")
    )
    assert json_captions[1]["caption"] == "a green sample"


def test_streaming_webdataset_with_dataloader(shards):
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    ds = load_caption_dataset(f"webdataset:{shards}/shard-*.tar", streaming=True,
                              transform=lambda im: torch.ones(3, 2, 2),
                              tokenize=lambda texts: torch.zeros(len(texts), 5, dtype=torch.long))
    assert isinstance(ds, IterableDataset)
    skips = SkipCounter()
    captions = []
    for batch in DataLoader(ds, batch_size=2, collate_fn=collate):
        skips.update(batch)
        captions += batch.get("caption", [])
        if batch["batch_size"]:
            assert batch["image"].shape[1:] == (3, 2, 2) and batch["text"].shape[1] == 5
    assert captions == ["a red sample", "a green sample", "a blue sample"]
    assert skips.skipped == 1 and skips.seen == 4
    plain = load_caption_dataset(f"webdataset:{shards}/shard-*.tar", streaming=True)
    assert pickle.loads(pickle.dumps(plain)).caption_column == "txt"  # spawn-safe
    assert "not an image" in skips_reason(ds)


def skips_reason(ds) -> str:
    return " ".join(ds.skips.reasons)


def test_streaming_imagefolder(imagefolder):
    ds = load_caption_dataset(f"imagefolder:{imagefolder}", streaming=True)
    items = list(ds)
    assert sum(it is None for it in items) == 1 and ds.skips.skipped == 1
    assert sorted(it["caption"] for it in items if it) == ["a green image", "a red image"]


def test_bad_specs(tmp_path, imagefolder):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve_spec(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="'path'"):
        resolve_spec({"data_dir": "x"})
    with pytest.raises(ValueError, match="no caption column 'nope'"):
        load_caption_dataset(imagefolder, caption_column="nope", cache_dir=str(tmp_path / "cache"))
    assert resolve_spec("someone/some-dataset") == ("someone/some-dataset", {})
    assert resolve_spec(str(imagefolder)) == ("imagefolder", {"data_dir": str(imagefolder)})


@pytest.mark.parametrize("streaming", [False, True])
def test_unknown_split_names_the_splits_there_are(tmp_path, streaming):
    from vlm.data.hf import UnknownSplitError

    for split in ("train", "val"):  # HF calls a val/ folder's split "validation"
        (tmp_path / "d" / split).mkdir(parents=True)
        (tmp_path / "d" / split / "a.png").write_bytes(_image_bytes((1, 2, 3)))
        (tmp_path / "d" / split / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": split}))
    with pytest.raises(UnknownSplitError, match=r"no split 'val' \(it has train, validation\)") as e:
        load_caption_dataset(tmp_path / "d", split="val", streaming=streaming, cache_dir=str(tmp_path / "cache"))
    assert e.value.available == ["train", "validation"]
    ds = load_caption_dataset(tmp_path / "d", split="validation", cache_dir=str(tmp_path / "cache"))
    assert ds.captions() == ["val"]


def test_caption_text_forms():
    assert caption_text(" a cat ") == "a cat"
    assert caption_text(["", "first", "second"]) == "first"
    assert caption_text({"caption": "from json"}) == "from json"
    assert caption_text(b"bytes caption") == "bytes caption"
    assert caption_text(None) == ""


def test_import_is_light():
    code = "import sys, vlm.data.hf; print('datasets' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
