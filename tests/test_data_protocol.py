"""Every caption dataset kind satisfies the one interface (vlm.data.dataset), on procedural data.

The kinds: CocoCaptions (a `vlm data shapes` dir), KarpathySplit (a dataset_coco.json over the
same images), HFCaptionDataset and StreamingCaptionDataset (a Hugging Face image folder). Each
holds one missing image, which every kind skips and counts the same way.

Run: ``pytest tests/test_data_protocol.py -q``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from vlm.data.collate import SkipCounter
from vlm.data.dataset import CaptionDataset, CaptionReferences
from vlm.data.shapes_dir import generate_shapes

ROOT = Path(__file__).resolve().parents[1]
N = 6  # images; image 2 is deleted


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    data = generate_shapes(tmp_path_factory.mktemp("protocol") / "shapes", N, seed=4)
    (data / "images" / "000002.png").unlink()
    return data


def _scenes(shapes: Path) -> tuple[list[dict], dict[int, list[str]]]:
    meta = json.loads((shapes / "annotations" / "captions.json").read_text())
    caps: dict[int, list[str]] = {}
    for ann in sorted(meta["annotations"], key=lambda a: a["id"]):
        caps.setdefault(ann["image_id"], []).append(ann["caption"])
    return meta["images"], caps


def coco(shapes: Path, tmp_path: Path):
    from vlm.data.layout import open_caption_dir

    return open_caption_dir(shapes)


def karpathy(shapes: Path, tmp_path: Path):
    from vlm.data.layout import open_karpathy

    images, caps = _scenes(shapes)
    entries = [{"filepath": "images", "filename": im["file_name"], "imgid": n, "split": "test",
                "cocoid": im["id"], "sentences": [{"raw": c} for c in caps[im["id"]]]}
               for n, im in enumerate(images)]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    return open_karpathy(tmp_path / "dataset_coco.json", shapes, "test")


def _imagefolder(shapes: Path, tmp_path: Path) -> Path:
    """One row per caption: every caption of every scene, file names relative to the folder."""
    import os

    folder = tmp_path / "hf"
    folder.mkdir()
    images, caps = _scenes(shapes)
    rows = []
    for im in images:
        src = shapes / "images" / im["file_name"]
        if src.exists():
            os.link(src, folder / im["file_name"])
        else:  # metadata naming a missing file is refused by HF: an undecodable file instead
            (folder / im["file_name"]).write_bytes(b"not a png")
        rows += [{"file_name": im["file_name"], "caption": c} for c in caps[im["id"]]]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def hf(shapes: Path, tmp_path: Path):
    pytest.importorskip("datasets")
    from vlm.data.hf import load_caption_dataset

    return load_caption_dataset(_imagefolder(shapes, tmp_path), cache_dir=str(tmp_path / "cache"))


def streaming(shapes: Path, tmp_path: Path):
    pytest.importorskip("datasets")
    from vlm.data.hf import load_caption_dataset

    return load_caption_dataset(_imagefolder(shapes, tmp_path), streaming=True)


KINDS = {"coco": coco, "karpathy": karpathy, "hf": hf, "streaming": streaming}


def _items(ds) -> list:
    return list(ds) if ds.is_stream else [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_a_caption_dataset(kind, shapes, tmp_path):
    ds = KINDS[kind](shapes, tmp_path)
    assert isinstance(ds, CaptionDataset)
    assert ds.is_stream is (kind == "streaming")
    _, caps = _scenes(shapes)
    every = [c for i in sorted(caps) for c in caps[i]]  # scene order, each scene's captions in order
    assert ds.captions() == every
    assert ds.captions(limit=3) == every[:3]
    assert isinstance(ds.skips, SkipCounter) and ds.skips.seen == 0  # captions() read no image
    items = _items(ds)
    assert [it["caption"] for it in items if it is not None] == \
        [c for i in sorted(caps) if i != 2 for c in caps[i]]
    assert (ds.skips.seen, ds.skips.skipped) == (len(every), len(caps[2]))  # image 2: one skip per caption
    assert any("000002.png" in e for e in ds.skips.examples)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_images_view_and_its_limit(kind, shapes, tmp_path):
    ds = KINDS[kind](shapes, tmp_path)
    _, caps = _scenes(shapes)
    first = _items(ds.images(limit=3))
    assert len(first) == 3 and ds.skips.seen == 3  # the view shares the dataset's skip count
    if kind in ("coco", "karpathy"):  # one item per image, its first reference
        assert [it and it["caption"] for it in first] == [caps[1][0], None, caps[3][0]]
        assert ds.skips.skipped == 1 and len(_items(ds.images())) == N
    else:  # one row per caption: the first rows
        assert [it["caption"] for it in first] == caps[1][:3] and ds.skips.skipped == 0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_coco_format_kinds_have_the_reference_view(kind, shapes, tmp_path):
    ds = KINDS[kind](shapes, tmp_path)
    if kind not in ("coco", "karpathy"):
        assert not isinstance(ds, CaptionReferences)
        return
    assert isinstance(ds, CaptionReferences)
    _, caps = _scenes(shapes)
    assert ds.image_ids() == sorted(caps) and ds.references() == caps
    assert ds.captions_for(3) == caps[3] and ds.image_path(3) == shapes / "images" / "000003.png"


def test_evaluation_and_the_cli_do_not_import_training():
    """Layout detection lives with the data, so data, evaluation, indexing and the CLI do not
    depend on the training package (vlm/classify's fine-tuning task does, by design)."""
    found = []
    for package in ("data", "evaluation", "index", "cli"):
        for path in sorted((ROOT / "vlm" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("vlm.training")]
    assert found == []
