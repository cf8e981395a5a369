"""Tests for the procedural shapes dataset (vlm.data.shapes) and its CLI.

Run: pytest tests/test_shapes.py
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from vlm.cli.data import main as data_main
from vlm.data.shapes import BACKGROUNDS, CLASSES, COLORS, SHAPES
from vlm.data.shapes_dir import generate_shapes

N = 40


def shapes_main(argv: list[str]) -> int:
    return data_main(["shapes", *argv])


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes_a"), n=N, seed=7)


def _load(root: Path) -> dict:
    return json.loads((root / "annotations" / "captions.json").read_text())


def test_same_seed_is_byte_identical(shapes_dir, tmp_path):
    again = generate_shapes(tmp_path / "b", n=N, seed=7)
    for rel in ["annotations/captions.json", "classes.json"] + [
        f"images/{i:06d}.png" for i in (1, 2, 17, N)
    ]:
        assert (shapes_dir / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_prefix_stable_and_seed_changes_images(shapes_dir, tmp_path):
    shorter = generate_shapes(tmp_path / "short", n=5, seed=7)
    other = generate_shapes(tmp_path / "other", n=5, seed=8)
    for i in range(1, 6):
        name = f"images/{i:06d}.png"
        assert (shorter / name).read_bytes() == (shapes_dir / name).read_bytes()
    differing = sum(
        (other / f"images/{i:06d}.png").read_bytes() != (shapes_dir / f"images/{i:06d}.png").read_bytes()
        for i in range(1, 6)
    )
    assert differing == 5
    assert _load(other)["annotations"] != _load(shorter)["annotations"]


def test_pycocotools_loads_it(shapes_dir):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(shapes_dir / "annotations" / "captions.json"))
    ids = coco.getImgIds()
    assert sorted(ids) == list(range(1, N + 1))
    for image_id in ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        captions = [a["caption"] for a in anns]
        assert len(captions) == 5 and len(set(captions)) == 5
        info = coco.loadImgs(image_id)[0]
        assert (shapes_dir / "images" / info["file_name"]).is_file()
        assert info["width"] == info["height"] == 64


def test_image_metadata(shapes_dir):
    from PIL import Image

    for info in _load(shapes_dir)["images"]:
        assert info["background"] in BACKGROUNDS
        assert 1 <= len(info["objects"]) <= 3
        for obj in info["objects"]:
            assert obj["shape"] in SHAPES and obj["color"] in COLORS
            assert obj["size"] in ("small", "large")
            x, y, w, h = obj["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 5 and h > 5
            cx, cy = obj["center"]
            assert x <= cx <= x + w and y <= cy <= y + h
    with Image.open(shapes_dir / "images" / "000001.png") as image:
        assert image.mode == "RGB" and image.size == (64, 64)


def test_classes_file_matches_single_object_images(shapes_dir):
    classes = json.loads((shapes_dir / "classes.json").read_text())
    assert classes["classes"] == CLASSES and len(CLASSES) == len(COLORS) * len(SHAPES)
    assert all("{}" in t for t in classes["templates"])
    data = _load(shapes_dir)
    singles = {info["id"]: info["objects"][0] for info in data["images"] if len(info["objects"]) == 1}
    assert 0.25 * N <= len(singles) <= 0.75 * N
    assert {int(k) for k in classes["labels"]} == set(singles)
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    for image_id, obj in singles.items():
        name = CLASSES[classes["labels"][str(image_id)]]
        assert name == f"{obj['color']} {obj['shape']}"
        for caption in captions[image_id]:
            assert name in caption, caption


def test_multi_object_captions_name_only_present_colors(shapes_dir):
    data = _load(shapes_dir)
    present = {info["id"]: {o["color"] for o in info["objects"]} for info in data["images"]}
    for ann in data["annotations"]:
        words = set(ann["caption"].replace(",", " ").split())
        assert words & set(COLORS) <= present[ann["image_id"]], ann["caption"]


def test_cli_writes_dataset(tmp_path, capsys):
    assert shapes_main(["--out", str(tmp_path / "cli"), "--n", "3", "--seed", "1"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(_load(tmp_path / "cli")["images"]) == 3
    assert shapes_main(["--out", str(tmp_path / "bad"), "--n", "0", "--seed", "1"]) == 2
    assert "--n 0: must be a positive integer" in capsys.readouterr().err


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n="):
        generate_shapes("unused", n=0, seed=0)
    with pytest.raises(ValueError, match="seed="):
        generate_shapes("unused", n=1, seed=-1)
    with pytest.raises(ValueError, match="image_size="):
        generate_shapes("unused", n=1, seed=0, image_size=16)


def test_a_rewrite_through_the_api_replaces_the_earlier_dataset_and_refuses_foreign_content(tmp_path):
    """generate_shapes and generate_class_folders replace what either of them wrote before, and
    refuse (InvalidOption out_dir=..., --out on the command line) a directory holding anything else."""
    from vlm.classify.shapes import generate_class_folders
    from vlm.errors import InvalidOption

    out = generate_class_folders(tmp_path / "d", n=30, seed=1, classes=8)
    generate_class_folders(out, n=5, seed=2, classes=2)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert len(names) == 5 and len({n.split("/")[1] for n in names}) == 5  # no id in two classes
    generate_shapes(out, n=3, seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "classes.json", "images"]
    (out / "images" / "extra.txt").write_text("mine")
    with pytest.raises(InvalidOption, match=r"^out_dir='.*': .*extra.txt is not from vlm data shapes") as e:
        generate_class_folders(out, n=3, seed=1)
    assert e.value.cli_message().startswith(f"--out {out}: ")
    assert (out / "images" / "extra.txt").exists() and not (out / "red circle").exists()
