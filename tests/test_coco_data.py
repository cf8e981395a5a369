"""Tests for COCO captions / Karpathy split datasets and skip-aware batching.

Fixtures are written in tmp_path: a ``captions_val2017.json``-style file and a
Karpathy ``dataset_coco.json``, each referencing one missing and one corrupt
image besides valid ones.

Run: pytest tests/test_coco_data.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlm.data.coco import CocoCaptions, KarpathySplit
from vlm.data.collate import SkipCounter, collate


def _png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), color).save(path)


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    root = tmp_path / "val2017"
    _png(root / "000000000139.jpg", (255, 0, 0))
    _png(root / "000000000285.jpg", (0, 255, 0))
    (root / "000000000632.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    # 000000000724.jpg is referenced but missing
    images = [
        {"license": 4, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 10, "width": 12,
         "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i}
        for i in (139, 285, 632, 724, 776)  # 776 has no caption
    ]
    annotations = [
        {"image_id": 139, "id": 10, "caption": "A woman stands in the dining area at the table."},
        {"image_id": 139, "id": 11, "caption": "A room with chairs, a table, and a woman in it."},
        {"image_id": 285, "id": 20, "caption": "A big burly grizzly bear is show with grass in the background."},
        {"image_id": 632, "id": 30, "caption": "Bedroom scene with a bookcase, blue comforter and window."},
        {"image_id": 724, "id": 40, "caption": "A stop sign is mounted upside-down on it's post. "},
    ]
    data = {
        "info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0",
                 "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 4,
                      "name": "Attribution-NonCommercial-ShareAlike License"}],
        "images": images,
        "annotations": annotations,
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_captions_pairs_and_eval_view(coco_dir):
    ds = CocoCaptions(coco_dir / "val2017", coco_dir / "annotations" / "captions_val2017.json")
    assert len(ds) == 5  # (image, caption) pairs of images that have captions
    assert ds.image_ids() == [139, 285, 632, 724]
    assert ds.captions_for(139) == [
        "A woman stands in the dining area at the table.",
        "A room with chairs, a table, and a woman in it.",
    ]
    assert ds.captions_for(724) == ["A stop sign is mounted upside-down on it's post."]
    assert ds.image_path(285) == coco_dir / "val2017" / "000000000285.jpg"
    assert set(ds.references()) == {139, 285, 632, 724}
    item = ds[0]
    assert item["image"].mode == "RGB" and item["image"].size == (12, 10)
    assert item["caption"].startswith("A woman") and item["image_id"] == 139
    with pytest.raises(KeyError, match="999"):
        ds.captions_for(999)


def test_coco_missing_and_corrupt_images_are_skipped_and_counted(coco_dir):
    ds = CocoCaptions(coco_dir / "val2017", coco_dir / "annotations" / "captions_val2017.json")
    items = [ds[i] for i in range(len(ds))]
    assert [it is None for it in items] == [False, False, False, True, True]
    assert ds.skips.skipped == 2 and ds.skips.seen == 5
    assert "skipped 2 of 5 items" in ds.skips.summary()
    assert any("000000000724.jpg" in e for e in ds.skips.examples)
    assert any("000000000632.jpg" in e for e in ds.skips.examples)
    evaluation = ds.images()
    assert len(evaluation) == 4 and sum(it is None for it in evaluation) == 2


def test_dataloader_with_transform_tokenize_and_collate(coco_dir):
    import torch
    from torch.utils.data import DataLoader

    def transform(image):
        return torch.zeros(3, 4, 4)

    def tokenize(texts):
        return torch.tensor([[len(t), 1, 0] for t in texts])

    ds = CocoCaptions(coco_dir / "val2017", coco_dir / "annotations" / "captions_val2017.json",
                      transform=transform, tokenize=tokenize)
    skips = SkipCounter()
    sizes = []
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate):
        skips.update(batch)
        sizes.append(batch["batch_size"])
        if batch["batch_size"]:
            assert batch["image"].shape == (batch["batch_size"], 3, 4, 4)
            assert batch["text"].shape == (batch["batch_size"], 3)
            assert len(batch["caption"]) == batch["batch_size"]
    assert sizes == [3, 0] and skips.skipped == 2 and skips.seen == 5
    assert collate([None, None]) == {"num_skipped": 2, "batch_size": 0}


def test_coco_bad_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoCaptions(tmp_path, tmp_path / "nope.json")


@pytest.fixture()
def karpathy_file(coco_dir: Path) -> Path:
    def entry(imgid, cocoid, split, folder, captions):
        return {
            "filepath": folder, "filename": f"{cocoid:012d}.jpg", "imgid": imgid, "split": split,
            "sentids": list(range(len(captions))), "cocoid": cocoid,
            "sentences": [{"tokens": c.lower().split(), "raw": c, "imgid": imgid, "sentid": k}
                          for k, c in enumerate(captions)],
        }

    data = {
        "dataset": "coco",
        "images": [
            entry(0, 139, "train", "val2017", ["A woman in a kitchen.", "A room with a table."]),
            entry(1, 285, "restval", "val2017", ["A brown bear in the grass."]),
            entry(2, 632, "val", "val2017", ["A bedroom with a bookcase."]),  # corrupt file
            entry(3, 724, "test", "val2017", ["An upside-down stop sign."]),  # missing file
            entry(4, 139, "test", "val2017", ["Reused image in test."])
            | {"cocoid": 139000, "filename": "000000000139.jpg"},
        ],
    }
    path = coco_dir / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path


def test_karpathy_splits_and_restval(karpathy_file, coco_dir):
    train = KarpathySplit(karpathy_file, coco_dir, "train")
    assert train.image_ids() == [139, 285] and len(train) == 3
    train_only = KarpathySplit(karpathy_file, coco_dir, "train", include_restval=False)
    assert train_only.image_ids() == [139] and len(train_only) == 2
    assert KarpathySplit(karpathy_file, coco_dir, "restval").image_ids() == [285]
    assert KarpathySplit(karpathy_file, coco_dir, "val").image_ids() == [632]
    test = KarpathySplit(karpathy_file, coco_dir, "test")
    assert test.image_ids() == [724, 139000]
    assert test.image_path(139000) == coco_dir / "val2017" / "000000000139.jpg"
    assert train.captions_for(139) == ["A woman in a kitchen.", "A room with a table."]
    assert train[0]["image"].size == (12, 10)


def test_karpathy_skips_missing_and_corrupt(karpathy_file, coco_dir):
    test = KarpathySplit(karpathy_file, coco_dir, "test")
    assert test[0] is None and test[1] is not None
    val = KarpathySplit(karpathy_file, coco_dir, "val")
    assert val[0] is None
    assert test.skips.skipped == 1 and val.skips.skipped == 1
    total = SkipCounter()
    total.merge(test.skips)
    total.merge(val.skips)
    assert total.skipped == 2 and total.seen == 3


def test_karpathy_bad_inputs(karpathy_file, coco_dir, tmp_path):
    with pytest.raises(ValueError, match="split 'dev'"):
        KarpathySplit(karpathy_file, coco_dir, "dev")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        KarpathySplit(tmp_path / "bad.json", coco_dir, "test")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        KarpathySplit(tmp_path / "missing.json", coco_dir, "test")


def test_open_caption_dir_single_layout_has_no_splits(tmp_path):
    from vlm.data.layout import open_caption_dir
    from vlm.data.shapes_dir import generate_shapes

    data = generate_shapes(tmp_path / "shapes", 3, seed=2)
    ds = open_caption_dir(data)
    assert isinstance(ds, CocoCaptions) and len(ds.image_ids()) == 3
    for split in ("val", "nonsense"):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(data))} has one annotations/captions\.json "
                                             r"\(no splits\)"):
            open_caption_dir(data, split)


def test_open_caption_dir_reads_a_karpathy_root(karpathy_file, coco_dir):
    from vlm.data.layout import open_caption_dir

    (coco_dir / "annotations" / "captions_val2017.json").unlink()  # only dataset_coco.json + val2017/
    test = open_caption_dir(coco_dir, "test", load_images=False)
    assert isinstance(test, KarpathySplit) and test.image_ids() == [724, 139000]
    assert test.image_path(139000) == coco_dir / "val2017" / "000000000139.jpg"
    assert test.captions_for(724) == ["An upside-down stop sign."]
    assert test[0]["image"] == str(coco_dir / "val2017" / "000000000724.jpg")  # a path: not loaded
    assert open_caption_dir(coco_dir, "train").image_ids() == [139, 285]  # with restval
    with pytest.raises(ValueError, match=r"dataset_coco\.json has the Karpathy splits .*: choose one"):
        open_caption_dir(coco_dir)
    with pytest.raises(ValueError, match=r"dataset_coco\.json has the Karpathy splits .*: not 'dev'"):
        open_caption_dir(coco_dir, "dev")


def test_evaluate_model_on_a_karpathy_root(karpathy_file, coco_dir, tiny_checkpoint):
    import vlm
    from vlm.evaluation.evaluate import evaluate_model

    report = evaluate_model(vlm.load(str(tiny_checkpoint), device="cpu"), coco_dir, "test", max_tokens=4,
                            spice=False, meteor=False)
    assert report["num_images"] == 1 and report["skipped_images"] == 1  # 000000000724.jpg is missing
    assert report["examples"][0]["image_id"] == 139000
    assert report["examples"][0]["reference"] == "Reused image in test."
    assert set(report["retrieval"]) >= {"i2t_r1", "t2i_r1"}
