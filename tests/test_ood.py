"""The out-of-distribution check of the default model (vlm.trust.ood) and how its notice reaches users.

Real photos and scans are the ones that ship inside installed packages (scikit-image, and
matplotlib / scikit-learn when present: ``vlm.trust.families.packaged_photos``); in-distribution
scenes come from ``vlm.data.shapes`` with seed 4242, which neither training nor the calibration
(scripts/calibrate_ood.py: seeds 1001, 1002, 90210) used.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_vlm

pytest.importorskip("skimage.data")

EXAMPLES = sorted((REPO / "examples").glob("*.png"))  # four shapes scenes


@pytest.fixture(scope="module")
def default():
    import vlm

    return vlm.load(device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five packaged photos and scans on disk (a cat, coffee, the moon, a brick wall, a page of text)."""
    import skimage.data as sk

    d = tmp_path_factory.mktemp("photos")
    for name in ("cat", "coffee", "moon", "brick", "page"):
        Image.fromarray(getattr(sk, name)()).save(d / f"{name}.png")
    return sorted(d.iterdir())


def test_detector_flags_packaged_photos_and_spares_fresh_shapes_scenes(default):
    from vlm.data.shapes import render_scene, sample_scene
    from vlm.io.images import preprocess_batch
    from vlm.trust.families import packaged_photos
    from vlm.trust.ood import OODCheck

    check = OODCheck.for_checkpoint(REPO / "vlm" / "pretrained" / "default")
    scenes = []
    for i in range(1, 201):
        rng = np.random.default_rng([4242, i])
        scenes.append(render_scene(sample_scene(rng, 64), rng, 64))
    far_in = check.far(default.model, preprocess_batch(scenes, default.preprocess_cfg))
    assert int(far_in.sum()) <= 2  # at most 1% of 200 fresh scenes
    real = [img for imgs in packaged_photos().values() for img in imgs]
    assert len(real) >= 30
    far_out = check.far(default.model, preprocess_batch(real, default.preprocess_cfg))
    assert float(far_out.float().mean()) >= 0.95, far_out.tolist()


def test_notice_counts_every_image_once_per_run_at_any_batch_size(photos):
    inputs = [*photos, *EXAMPLES]  # 5 photos, then 4 shapes scenes
    want = f"5 of {len(inputs)} images look far from what the default model was trained on"
    r = run_vlm("caption", *inputs, "--batch-size", "2", "--json")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and want in notes[0], r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["ood"] for row in rows] == [True] * 5 + [False] * 4
    r = run_vlm("classify", *inputs, "--labels", "red star,blue circle", "--batch-size", "1", "--json")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and want in notes[0], r.stderr
    assert [json.loads(line)["ood"] for line in r.stdout.splitlines()] == [True] * 5 + [False] * 4


def test_api_results_carry_ood_and_each_call_warns_once(default, photos):
    from vlm.trust.ood import OutOfDistributionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        caps = default.caption([*photos[:3], *EXAMPLES[:2]])
        top = default.classify([EXAMPLES[0], photos[3]], ["red star", "blue circle"], top_k=1)
        with default.ood_run():  # several calls, one run
            default.classify([photos[4]], ["red star", "blue circle"])
            default.similarity([EXAMPLES[1], photos[0]], ["a red star"])
    assert [c.ood for c in caps] == [True, True, True, False, False] and all(isinstance(c, str) for c in caps)
    assert [t.ood for t in top] == [False, True] and top[0][0][0] in ("red star", "blue circle")
    notes = [str(w.message) for w in caught if issubclass(w.category, OutOfDistributionWarning)]
    assert len(notes) == 3, notes
    assert notes[0].startswith("3 of 5 images") and notes[1].startswith("1 of 2 images")
    assert notes[2].startswith("2 of 3 images")


def test_index_stores_ood_and_search_returns_it(photos, tmp_path):
    out = tmp_path / "idx"
    r = run_vlm("index", photos[0], photos[2], *EXAMPLES, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("images/s; 2 look far from the model's training data"), r.stdout
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "2 of 6 images look far" in notes[0], r.stderr
    import pyarrow.parquet as pq

    import vlm.index

    info = json.loads((out / "index.json").read_text())
    rows = pq.read_table(out / info["rows"]).to_pydict()
    assert {p: f for p, f in zip(rows["path"], rows["ood"])} == \
        {**{str(p): True for p in (photos[0], photos[2])}, **{str(p): False for p in EXAMPLES}}
    hits = vlm.index.open(out).search(text="a red star", k=6)
    assert {h.path: h.ood for h in hits} == {p: f for p, f in zip(rows["path"], rows["ood"])}
    assert all("ood" in h.to_dict() for h in hits)


def test_a_checkpoint_without_a_profile_has_no_flag_and_a_damaged_one_is_refused(tmp_path, photos):
    import vlm
    from vlm.errors import ModelError

    bare = tmp_path / "bare"
    shutil.copytree(REPO / "vlm" / "pretrained" / "default", bare)
    (bare / "ood.safetensors").unlink()
    pipe = vlm.load(str(bare), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notice at all
        assert pipe.caption([photos[0]])[0].ood is None
    r = run_vlm("classify", photos[0], "--labels", "red star,blue circle", "--model", bare, "--json")
    assert r.returncode == 0 and "ood" not in json.loads(r.stdout) and r.stderr == "", r.stderr
    import torch
    from safetensors.torch import save_file

    legacy = {"threshold": 25.0, "image_size": 64, "about": "procedural shapes scenes"}  # before feature_kind
    save_file({"mean": torch.zeros(96), "whiten": torch.eye(96)}, str(bare / "ood.safetensors"),
              metadata={"calibration": json.dumps(legacy)})
    old = vlm.load(str(bare), device="cpu")
    assert old.ood_notice.check.feature == "tokens_mean"
    assert old.ood_flags(old.images_to_tensor([photos[0]])) in ([True], [False])
    (bare / "ood.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="ood.safetensors: not an out-of-distribution profile"):
        vlm.load(str(bare), device="cpu")


def test_similarity_gives_one_notice_for_the_run(photos):
    r = run_vlm("similarity", "--images", *photos[:3], *EXAMPLES[:1], "--texts", "a red star", "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "3 of 4 images look far" in notes[0], r.stderr
