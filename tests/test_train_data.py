"""Training data selection (vlm.training.data): which sets become the training and validation loaders.

A single-layout dir (annotations/captions.json + images/) has no splits: without
data.val_root there is no validation set (one note says so) rather than the
training images validated on. Hugging Face folders name a val/ folder's split
"validation"; the default data.val_split "val" finds it.

Run: ``pytest tests/test_train_data.py -q``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm.model.config import get_config
from vlm.data.shapes_dir import generate_shapes
from vlm.training.config import DataConfig, TrainConfig
from vlm.training.data import build_loaders, train_captions


def fake_tokenizer(texts, context_length):
    return torch.zeros(len(texts), context_length, dtype=torch.long)


def loaders(**data):
    cfg = TrainConfig(data=DataConfig(batch_size=2, **data))
    return build_loaders(cfg, get_config("tiny"), fake_tokenizer)


def notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlm.training"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("train_data")
    return generate_shapes(base / "train", 8, seed=11), generate_shapes(base / "val", 5, seed=12)


def test_single_layout_without_val_root_has_no_validation(shapes, caplog):
    train, _ = shapes
    with caplog.at_level(logging.INFO, logger="vlm.training"):
        train_loader, val_loader, val_set = loaders(kind="shapes", root=str(train))  # val_split "val"
    assert val_loader is None and val_set is None
    assert len(train_loader.dataset.image_ids()) == 8
    (note,) = notes(caplog)
    assert str(train) in note and "no validation" in note and "data.val_root" in note and "\n" not in note


def test_single_layout_val_root_is_the_validation_set(shapes, caplog):
    train, val = shapes
    with caplog.at_level(logging.INFO, logger="vlm.training"):
        train_loader, val_loader, val_set = loaders(kind="coco", root=str(train), val_root=str(val),
                                                    train_split="train", val_split="val")
    assert len(train_loader.dataset.image_ids()) == 8
    assert val_loader is not None and len(val_set) == 5  # one item per validation image
    val_paths = {Path(val_set[i]["path"]).parent for i in range(len(val_set))}
    assert val_paths == {val / "images"}
    assert notes(caplog) == []
    _, val_loader, val_set = loaders(kind="shapes", root=str(train), val_split=None)
    assert val_loader is None and val_set is None and notes(caplog) == []


def _hf_folder(root: Path) -> Path:
    for split, colors in (("train", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]),
                          ("val", [(200, 200, 0), (0, 200, 200)])):
        (root / split).mkdir(parents=True)
        rows = []
        for i, color in enumerate(colors):
            Image.new("RGB", (8, 6), color).save(root / split / f"{i}.png")
            rows.append({"file_name": f"{i}.png", "caption": f"{split} caption {i}"})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture()
def hf_folder(tmp_path, monkeypatch) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return _hf_folder(tmp_path / "hf")


def test_hf_val_folder_is_the_default_validation_split(hf_folder):
    train_loader, val_loader, val_set = loaders(kind="hf", hf_name=str(hf_folder))  # val_split "val"
    assert len(train_loader.dataset) == 4
    assert val_loader is not None
    assert sorted(val_set[i]["caption"] for i in range(len(val_set))) == ["val caption 0", "val caption 1"]
    with pytest.raises(ValueError, match=r"^data\.val_split=dev: .*no split 'dev'.*train, validation"):
        loaders(kind="hf", hf_name=str(hf_folder), val_split="dev")
    with pytest.raises(ValueError, match=r"^data\.train_split=training: "):
        loaders(kind="hf", hf_name=str(hf_folder), train_split="training")


def test_hf_train_captions_decode_no_image(hf_folder, monkeypatch):
    from vlm.data import hf

    decoded = []
    load = hf._RowDecoder._load
    monkeypatch.setattr(hf._RowDecoder, "_load", lambda self, *a: decoded.append(a) or load(self, *a))
    cfg = TrainConfig(data=DataConfig(kind="hf", hf_name=str(hf_folder)))
    assert sorted(train_captions(cfg)) == [f"train caption {i}" for i in range(4)]
    assert decoded == []


def _karpathy_root(shapes_dir: Path, root: Path) -> Path:
    """The shapes scenes as a Karpathy root: dataset_coco.json + train2014/ and val2014/."""
    meta = json.loads((shapes_dir / "annotations" / "captions.json").read_text())
    caps: dict[int, list[str]] = {}
    for ann in meta["annotations"]:
        caps.setdefault(ann["image_id"], []).append(ann["caption"])
    entries = []
    for n, image in enumerate(meta["images"]):
        split = "train" if n < 4 else "restval" if n < 6 else "val"
        folder = root / ("val2014" if split == "val" else "train2014")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image["file_name"]).write_bytes((shapes_dir / "images" / image["file_name"]).read_bytes())
        entries.append({"filepath": folder.name, "filename": image["file_name"], "imgid": n, "split": split,
                        "cocoid": image["id"], "sentences": [{"raw": c} for c in caps[image["id"]]]})
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    return root


def test_karpathy_data_is_read_one_way(shapes, tmp_path):
    """kind=karpathy (with or without data.karpathy_json) and kind=coco on a Karpathy root give the
    same sets: one reader (vlm.data.layout.open_karpathy), one split error."""
    root = _karpathy_root(shapes[0], tmp_path / "coco")
    sets = [loaders(kind="karpathy", root=str(root), karpathy_json=str(root / "dataset_coco.json")),
            loaders(kind="karpathy", root=str(root)), loaders(kind="coco", root=str(root))]
    for train_loader, _, val_set in sets:
        assert train_loader.dataset.image_ids() == [1, 2, 3, 4, 5, 6]  # train + restval
        assert [val_set[i]["image_id"] for i in range(len(val_set))] == [7, 8]
    errors = []
    for kind in ("karpathy", "coco"):
        with pytest.raises(ValueError, match=r"^data\.val_split=dev: .*dataset_coco\.json has the Karpathy "
                                             r"splits train, restval, val, test: not 'dev'$") as e:
            loaders(kind=kind, root=str(root), val_split="dev")
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    with pytest.raises(FileNotFoundError, match=r"no dataset_coco\.json \(set data\.karpathy_json\)"):
        loaders(kind="karpathy", root=str(shapes[0]))


def test_kind_shapes_refuses_a_dir_vlm_data_shapes_did_not_write(shapes, tmp_path):
    """kind=shapes is a checked name: a COCO-format dir of other origin is refused in one line
    (data.root or data.val_root named), and reads as it did under kind=coco."""
    import shutil

    train, val = shapes
    other = tmp_path / "other"
    shutil.copytree(train, other)
    meta = json.loads((other / "annotations" / "captions.json").read_text())
    meta["info"]["description"] = "my own captions"
    (other / "annotations" / "captions.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"^data\.root={other}: not a dataset `vlm data shapes` wrote "
                                         r"\(data\.kind=shapes\); for other COCO-format data set data\.kind=coco$"):
        loaders(kind="shapes", root=str(other), val_split=None)
    with pytest.raises(ValueError, match=rf"^data\.val_root={other}: not a dataset `vlm data shapes` wrote"):
        loaders(kind="shapes", root=str(train), val_root=str(other))
    train_loader, _, _ = loaders(kind="coco", root=str(other), val_split=None)
    assert len(train_loader.dataset.image_ids()) == 8
    with pytest.raises(FileNotFoundError, match="no such dataset directory"):
        loaders(kind="shapes", root=str(tmp_path / "missing"))
