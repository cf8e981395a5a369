"""Classification data layouts, the linear probe, classifier evaluation, and the CLI's bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_vlm


@pytest.fixture(scope="module")
def shapes_cls(tmp_path_factory):
    from vlm.classify.shapes import generate_class_folders

    root = tmp_path_factory.mktemp("shapes_cls")
    generate_class_folders(root / "train", n=200, seed=0, classes=4)
    generate_class_folders(root / "val", n=80, seed=1, classes=4)
    return root


def test_class_folders_csv_and_hf_layouts_agree(shapes_cls, tmp_path):
    from vlm.classify.data import open_labelled

    folders = open_labelled(shapes_cls / "val")
    assert folders.classes == ["red circle", "red square", "red star", "red triangle"] and len(folders) == 80
    csv = tmp_path / "val.csv"
    rows = [f"{p},{folders.classes[t]}" for p, t in zip(folders.sources, folders.targets)]
    csv.write_text("path,label\n" + "\n".join(rows) + "\nmissing/nothing.png,red star\n")
    table = open_labelled(csv)
    assert table.classes == folders.classes and table.targets[:-1] == folders.targets
    assert table[len(table) - 1] is None and table.skips.skipped == 1  # a missing file: skipped and counted
    pytest.importorskip("datasets")
    hf = open_labelled(f"hf:imagefolder:{shapes_cls / 'val'}")  # datasets' image folder: a ClassLabel column
    assert hf.classes == folders.classes and sorted(hf.targets) == sorted(folders.targets)
    item = hf[0]
    assert item["image"].size == (64, 64) and item["label"] in range(4)


def test_probe_reaches_accuracy_and_writes_a_classifier(shapes_cls, tmp_path, capsys):
    from vlm.cli.probe import main as probe

    out, cache = tmp_path / "probe", tmp_path / "cache"
    args = ["--train", str(shapes_cls / "train"), "--val", str(shapes_cls / "val"), "--cache", str(cache), "--json"]
    assert probe(args + ["--out", str(out)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["feature"] == "embedding" and first["val"]["images"] == 80
    assert first["val"]["top1"] >= 0.85  # the default model's embedding, 4 shape classes, 200 images
    assert first["weight_decay"] in [s["weight_decay"] for s in first["sweep"]]
    assert max(s["val_top1"] for s in first["sweep"]) == first["val"]["top1"]
    assert probe(args) == 0  # the features come from the cache the second time
    again = json.loads(capsys.readouterr().out)
    assert again["train"]["cached"] and again["val"]["cached"] and again["val"]["top1"] == first["val"]["top1"]
    from vlm.errors import UsageError

    with pytest.raises(UsageError) as refused:  # an existing checkpoint is kept unless --force says otherwise
        probe(args + ["--out", str(out)])
    assert "pass --force to replace it" in refused.value.cli_message()
    (out / "stale.txt").write_text("from an earlier run")
    assert probe(args + ["--out", str(out), "--force"]) == 0  # replaced as a whole, atomically
    assert json.loads(capsys.readouterr().out)["out"] == str(out) and not (out / "stale.txt").exists()

    import vlm
    from vlm.classify.data import open_labelled
    from vlm.classify.evaluate import evaluate_classifier

    pipe = vlm.load(str(out))
    assert pipe.labels == ["red circle", "red square", "red star", "red triangle"]
    val = open_labelled(shapes_cls / "val").remap(pipe.labels)
    report, conf = evaluate_classifier(pipe.model, pipe.preprocess_cfg, val)
    assert abs(report["top1"] - first["val"]["top1"]) < 1e-6 and int(conf.sum()) == 80
    top = pipe.classify([val.sources[0]], top_k=1)[0][0][0]
    assert top in pipe.labels


def test_evaluate_classifier_cli_json_plot_and_bad_input(shapes_cls, tmp_path):
    from vlm.classify.backbone import classifier_for
    from vlm.classify.checkpoint import save_classifier

    model, _, _ = classifier_for(None, ["red circle", "red square", "red star", "red triangle"])
    torch.manual_seed(0)
    model.set_head(torch.randn(4, model.cfg.feature_dim))
    ckpt = tmp_path / "ck"
    save_classifier(model, ckpt)
    plot = tmp_path / "cm.png"
    r = run_vlm("evaluate", "--model", ckpt, "--data", shapes_cls / "val", "--json", "--plot", plot)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["classification"]
    assert rep["images"] == 80 and set(rep["per_class_recall"]) == set(model.labels)
    assert 0 <= rep["top1"] <= rep["top5"] == 1.0 and plot.stat().st_size > 1000
    # a CSV with missing paths: each missing file named on one line, skipped and counted; some inputs
    # failed, so the status is 1 (as in vlm caption and caption evaluation), the metrics of the rest printed
    csv = tmp_path / "d.csv"
    first = sorted((shapes_cls / "val" / "red star").iterdir())[0]
    csv.write_text(f"{first},red star\n{tmp_path}/gone.png,red star\n{tmp_path}/lost.png,red star\n")
    r = run_vlm("evaluate", "--model", ckpt, "--data", csv)
    assert r.returncode == 1 and "2 unreadable skipped" in r.stdout, r.stderr
    for name in ("gone.png", "lost.png"):
        assert f"vlm evaluate: error: {tmp_path}/{name}: no such file or directory\n" in r.stderr, r.stderr
    assert (f"vlm evaluate: error: --data {csv}: 2 of 3 images could not be read; the metrics cover the other 1"
            in r.stderr), r.stderr
    assert len(r.stderr.splitlines()) == 3 and "Traceback" not in r.stderr, r.stderr
    r = run_vlm("evaluate", "--model", ckpt, "--data", csv, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["classification"]["images"] == 1, r.stderr
    # classes that are not the checkpoint's labels
    other = tmp_path / "other"
    for c in ("cat", "red star"):
        (other / c).mkdir(parents=True)
        (other / c / "a.png").write_bytes(first.read_bytes())
    r = run_vlm("evaluate", "--model", ckpt, "--data", other)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'cat' is not a label of the classifier" in r.stderr


def test_probe_cli_bad_layouts(shapes_cls, tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    src = sorted((shapes_cls / "val" / "red star").iterdir())[0]
    (one / "a" / "x.png").write_bytes(src.read_bytes())
    (empty / "a" / "x.png").write_bytes(src.read_bytes())
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,label\nx.png,\n")
    for data, reason in ((empty, f"{empty / 'b'}: empty class folder"), (one, "1 class (a); classification needs"),
                         (bad_csv, f"{bad_csv}:2: expected 'path,label'")):
        r = run_vlm("probe", "--train", data, "--val", shapes_cls / "val", "--cache", "")
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and reason in r.stderr and r.stdout == ""


def test_zero_shot_head_step0_accuracy_equals_classify(shapes_cls):
    """A head initialised from the class names through the templates classifies exactly as zero-shot
    ``classify`` with the same labels and templates: same top-1 on every image, same accuracy."""
    from vlm.classify.backbone import classifier_for
    from vlm.classify.data import open_labelled
    from vlm.classify.evaluate import evaluate_classifier
    from vlm.classify.zeroshot import class_embeddings, zero_shot_head

    val = open_labelled(shapes_cls / "val")
    templates = ["one {}", "a picture of one {}"]
    model, pre, pipe = classifier_for(None, val.classes, "embedding")
    emb = zero_shot_head(model, pipe, templates=templates)
    assert torch.allclose(emb, pipe.label_embeddings(val.classes, templates), atol=1e-5)
    report, _ = evaluate_classifier(model, pre, val)  # the classifier at step 0
    zs = pipe.classify(val.sources, val.classes, templates=templates, top_k=1)
    zs_acc = sum(top[0][0] == val.classes[t] for top, t in zip(zs, val.targets)) / len(val)
    assert report["top1"] == pytest.approx(zs_acc, abs=1e-6) and zs_acc > 0.5
    with torch.no_grad():
        probs = model(pipe.images_to_tensor(val.sources[:4])).logits.softmax(-1)
    for row, top in zip(probs, pipe.classify(val.sources[:4], val.classes, templates=templates, top_k=4)):
        assert {lb: p for lb, p in top} == pytest.approx({lb: float(row[i]) for i, lb in enumerate(val.classes)},
                                                         abs=1e-5)
    assert class_embeddings(pipe, val.classes, templates, batch_size=3).allclose(emb, atol=1e-5)


def test_evaluate_on_class_folders_is_zero_shot_for_clip_and_coca(shapes_cls):
    """`vlm evaluate --data DIR` on what `vlm data shapes --layout classes` writes: the default CoCa's
    zero-shot top-1 there is the share of images whose best label (Pipeline.classify over the folder
    names) is their folder's; --template is used (issue 18: it exited 2, "not a COCO-format dataset")."""
    import vlm
    from vlm.classify.data import open_labelled

    val = shapes_cls / "val"
    r = run_vlm("evaluate", "--data", val, "--json", "--template", "one {}", "--template", "a picture of one {}")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["classification"]
    assert report["zero_shot"] and report["templates"] == ["one {}", "a picture of one {}"]
    data = open_labelled(val)
    pipe = vlm.load()
    top = pipe.classify(data.sources, data.classes, templates=report["templates"], top_k=1)
    expected = sum(t[0][0] == data.classes[y] for t, y in zip(top, data.targets)) / len(data.targets)
    assert report["images"] == 80 and report["top1"] == pytest.approx(expected) and report["top5"] == 1.0
    assert expected >= 0.9  # the shapes model knows red shapes
    bad = run_vlm("evaluate", "--data", val, "--template", "no slot")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no slot" in bad.stderr, bad.stderr


def test_classify_and_index_read_a_folder_the_same_way(shapes_cls, tmp_path):
    """`vlm classify DIR` reads class sub-folders as `vlm index DIR` does (one function, recursive,
    hidden files and folders skipped); it said "directory contains no images" on class folders."""
    import shutil

    from vlm.index.sources import gather
    from vlm.io.images import collect_images

    root = tmp_path / "mixed"
    shutil.copytree(shapes_cls / "val", root)
    src = next((root / "red star").glob("*.png"))
    shutil.copy(src, root / "top.png")
    shutil.copy(src, root / ".hidden.png")
    (root / ".cache").mkdir()
    shutil.copy(src, root / ".cache" / "x.png")
    paths, errors = collect_images([str(root)])
    assert not errors and len(paths) == 81 and paths[0] == str(root / "top.png")
    assert sorted(paths) == sorted(r.key for r in gather([str(root)]).records)
    r = run_vlm("classify", shapes_cls / "val", "--labels", "red star,red circle,red square,red triangle",
                "--top-k", "1", "--json")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 80, r.stderr
