"""vlm index / vlm search and the vlm.index API: end to end on a `vlm data shapes` folder with the
default model, consistency with vlm evaluate's recall@k, incremental add/change/delete, kill -9
and re-run, two Accelerate processes equal to one, bad input, and the approximate index's recall."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, free_port, run_vlm

pytest.importorskip("faiss")


def _captions(shapes: Path) -> dict[str, list[str]]:
    """Absolute image path -> every reference caption."""
    d = json.loads((shapes / "annotations" / "captions.json").read_text())
    files = {im["id"]: str((shapes / "images" / im["file_name"]).resolve()) for im in d["images"]}
    out: dict[str, list[str]] = {}
    for a in d["annotations"]:
        out.setdefault(files[a["image_id"]], []).append(a["caption"])
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "s200"
    r = run_vlm("data", "shapes", "--out", out, "--n", 200, "--seed", 0)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def built(shapes, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("index") / "shapes.index"
    r = run_vlm("index", shapes, "--out", idx, "--batch-size", 32, "--shard-size", 64)
    assert r.returncode == 0, r.stderr
    assert "200 images (200 embedded, 0 unchanged, 0 skipped); flat index" in r.stdout, r.stdout
    return idx


def _vectors(index) -> np.ndarray:
    """The stored vector of every row, in index order, read from the shards."""
    from vlm.index.store import Shard, shard_dir

    shards = {}
    out = []
    for name, off in zip(index.rows["shard"], index.rows["offset"]):
        if name not in shards:
            shards[name] = Shard(name, shard_dir(index.path)).vectors()
        out.append(np.asarray(shards[name][off]))
    return np.stack(out)


def test_end_to_end_blue_triangle_precision_at_5(shapes, built):
    info = json.loads((built / "index.json").read_text())
    assert info["count"] == 200 and info["model"] == "default" and len(info["fingerprint"]) == 32
    assert info["index"]["type"] == "flat" and info["index"]["recall_at_10"] == 1.0
    r = run_vlm("search", built, "--text", "a blue triangle", "--text", "a red star", "--top-k", 5, "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["query"] for d in lines] == ["a blue triangle", "a red star"]
    caps = _captions(shapes)
    for d, words in zip(lines, ("blue triangle", "red star")):
        hits = d["results"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(4))
        precision = np.mean([any(words in c for c in caps[h["path"]]) for h in hits])
        assert precision >= 0.8, (words, [caps[h["path"]][0] for h in hits])
    # metadata: one parquet row per image with size, mtime, width, height, caption
    import vlm.index

    idx = vlm.index.open(built)
    n = idx.row(lines[0]["results"][0]["path"])
    assert idx.rows["width"][n] == idx.rows["height"][n] == 64
    assert idx.rows["caption"][n] == caps[idx.paths[n]][0]
    p = Path(idx.paths[n])
    assert idx.rows["size"][n] == p.stat().st_size and idx.rows["mtime"][n] == p.stat().st_mtime_ns
    assert np.allclose(np.linalg.norm(_vectors(idx), axis=1), 1.0, atol=1e-5)
    # query by image: the image itself comes first
    r = run_vlm("search", built, "--image", p, "--top-k", 3)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[-1] == str(p), r.stdout


def test_recall_through_the_index_equals_vlm_evaluate(shapes, built):
    import vlm
    import vlm.index
    from vlm.evaluation.evaluate import evaluate_model

    pipe = vlm.load()
    report = evaluate_model(pipe, shapes, batch_size=32, spice=False, meteor=False)["retrieval"]
    idx = vlm.index.open(built, pipeline=pipe)
    caps = _captions(shapes)
    texts = [c for p in idx.paths for c in caps[p]]
    owner = [p for p in idx.paths for _ in caps[p]]
    hits = idx.search(text=texts, k=10)
    for k in (1, 5, 10):
        ours = float(np.mean([own in [h.path for h in hs[:k]] for own, hs in zip(owner, hits)]))
        assert ours == pytest.approx(report[f"t2i_r{k}"], abs=1e-6), (k, ours, report)  # float32 means of 1000 hits
    assert 0.0 < report["t2i_r1"] < report["t2i_r10"] <= 1.0  # non-trivial


def _folder(shapes: Path, dest: Path, n: int) -> Path:
    dest.mkdir(parents=True)
    for p in sorted((shapes / "images").iterdir())[:n]:
        shutil.copy2(p, dest / p.name)
    return dest


def test_incremental_add_change_delete(shapes, tmp_path):
    import vlm
    import vlm.index

    pipe = vlm.load()
    photos = _folder(shapes, tmp_path / "photos", 12)
    (photos / "sub").mkdir()
    shutil.move(photos / "000012.png", photos / "sub" / "000012.png")  # folders are searched recursively
    out = tmp_path / "idx"
    first = vlm.index.build([photos], out, pipeline=pipe, shard_size=5, workers=0)
    assert (first.count, first.embedded, first.reused) == (12, 12, 0)
    before = vlm.index.open(out)
    old = dict(zip(before.paths, _vectors(before)))
    assert str((photos / "sub" / "000012.png").resolve()) in old

    again = vlm.index.build([photos], out, pipeline=pipe, shard_size=5, workers=0)
    assert (again.count, again.embedded, again.reused) == (12, 0, 12)

    images = sorted((shapes / "images").iterdir())
    shutil.copy2(images[20], photos / "new1.png")
    shutil.copy2(images[21], photos / "new2.png")
    changed, deleted = photos / "000003.png", photos / "000004.png"
    shutil.copyfile(images[30], changed)  # new content, new size/mtime
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    deleted.unlink()
    third = vlm.index.build([photos], out, pipeline=pipe, shard_size=5, workers=0)
    assert (third.count, third.embedded, third.reused) == (13, 3, 10)
    after = vlm.index.open(out)
    vecs = dict(zip(after.paths, _vectors(after)))
    assert str(deleted.resolve()) not in vecs and len(after) == 13
    for p, v in old.items():
        if p not in (str(changed.resolve()), str(deleted.resolve())):
            assert np.array_equal(vecs[p], v)
    fresh = pipe.encode_images([changed]).numpy()[0]
    assert np.allclose(vecs[str(changed.resolve())], fresh, atol=1e-5)
    assert not np.allclose(vecs[str(changed.resolve())], old[str(changed.resolve())], atol=1e-3)
    hit = after.search(image=str(photos / "new1.png"), k=1)[0]
    assert hit.path == str((photos / "new1.png").resolve()) and hit.score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_index(shapes, tmp_path):
    import vlm.index

    photos = _folder(shapes, tmp_path / "photos", 120)
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    args = ["index", photos, "--batch-size", 4, "--shard-size", 4, "--workers", 0]
    r = run_vlm(*args, "--out", ref)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", *map(str, args), "--out", crashed], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((crashed / "shards").glob("*.parquet"))) < 3:
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "index.json").exists()
    r = run_vlm("search", crashed, "--text", "a red star")
    assert r.returncode == 2 and "interrupted build" in r.stderr, r.stderr
    r = run_vlm(*args, "--out", crashed)
    assert r.returncode == 0, r.stderr
    done = int(r.stdout.split("unchanged")[0].split(",")[-1])
    assert 12 <= done < 120, r.stdout  # the shards committed before the kill were kept
    a, b = vlm.index.open(ref), vlm.index.open(crashed)
    assert a.paths == b.paths and len(a) == 120
    for col in ("size", "mtime", "width", "height"):
        assert a.rows[col] == b.rows[col]
    assert np.allclose(_vectors(a), _vectors(b), atol=1e-6)
    assert not [p for p in crashed.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_two_accelerate_processes_give_the_one_process_index(shapes, tmp_path):
    import vlm.index

    one, two = tmp_path / "one", tmp_path / "two"
    r = run_vlm("index", shapes / "images", "--out", one, "--shard-size", 16, "--workers", 0)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "vlm.cli.main", "index", str(shapes / "images"), "--out", str(two), "--shard-size", "16",
           "--workers", "0"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = {p.name.split("-")[1] for p in (two / "shards").glob("*.parquet")}
    assert ranks == {"r000", "r001"}  # each process wrote its own shards
    assert r.stdout.count("200 images (200 embedded") == 1  # one index, reported once
    a, b = vlm.index.open(one), vlm.index.open(two)
    assert a.paths == b.paths and len(a) == 200
    assert np.allclose(_vectors(a), _vectors(b), atol=1e-6)
    assert json.loads((one / "index.json").read_text())["fingerprint"] == \
        json.loads((two / "index.json").read_text())["fingerprint"]


def test_bad_input_is_skipped_named_and_counted(shapes, sample_images, tmp_path):
    photos = _folder(shapes, tmp_path / "photos", 6)
    shutil.copy(sample_images["truncated"], photos / "truncated.png")
    (photos / "fake.jpg").write_text("not an image")
    out = tmp_path / "idx"
    r = run_vlm("index", photos, tmp_path / "missing_dir", "--out", out)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("vlm index: error: ")]
    assert len(errors) == 3 and "Traceback" not in r.stderr, r.stderr
    assert any("truncated.png" in e for e in errors) and any("fake.jpg" in e for e in errors)
    assert any("missing_dir: no such file or directory" in e for e in errors)
    assert "6 images (6 embedded, 0 unchanged, 2 skipped)" in r.stdout, r.stdout
    # an empty source is a usage error; so is a source with no images
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "empty", tmp_path / "nothing_here"):
        r = run_vlm("index", src, "--out", tmp_path / "idx2")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nothing to index" in r.stderr, r.stderr


def test_search_errors_are_one_line(built, tmp_path, tiny_checkpoint):
    cases = [
        (["search", built, "--text", "  "], "empty query"),
        (["search", built, "--text", "a star", "--top-k", "0"], "--top-k 0: must be at least 1"),
        (["search", tmp_path / "nope", "--text", "a star"], "no such index directory"),
        (["search", tmp_path, "--text", "a star"], "no index.json"),
        (["search", built, "--text", "a star", "--model", tiny_checkpoint], "has other weights"),
        (["index", tmp_path, "--out", built, "--model", tiny_checkpoint], "nothing to index"),
    ]
    for args, message in cases:
        r = run_vlm(*args)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(built, corrupt)
    (corrupt / "index.json").write_text("{not json")
    r = run_vlm("search", corrupt, "--text", "a star")
    assert r.returncode == 2 and "index.json: corrupt" in r.stderr, r.stderr
    info = json.loads((built / "index.json").read_text())
    (corrupt / "index.json").write_text(json.dumps(info))
    (corrupt / info["faiss"]).write_bytes(b"garbage")
    r = run_vlm("search", corrupt, "--text", "a star")
    assert r.returncode == 2 and "unreadable faiss index" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_wrong_model_refused_when_updating(built, tmp_path, tiny_checkpoint, shapes):
    import vlm.index
    from vlm.errors import ModelError, UsageError

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    with pytest.raises(ModelError, match="has other weights"):
        vlm.index.build([shapes / "images"], copy, model=str(tiny_checkpoint))
    idx = vlm.index.open(built)
    with pytest.raises(UsageError, match="k=0"):
        idx.search(text="a star", k=0)
    with pytest.raises(UsageError, match="empty"):
        idx.search(text="")
    with pytest.raises(vlm.index.IndexFormatError, match="no such index directory"):
        vlm.index.open(tmp_path / "missing")


def test_approximate_index_recall_on_held_out_queries():
    """Above the exact limit the index is IVF; its recorded recall holds on fresh queries."""
    from vlm.index import ann

    rng = np.random.default_rng(0)
    n, d, clusters = ann.EXACT_LIMIT + 20_000, 32, 200
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    labels = rng.integers(0, clusters, n + 500)
    points = centres[labels] + 0.6 * rng.normal(size=(n + 500, d)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    vectors, queries = points[:n], points[n:]
    index, info = ann.build(vectors)
    assert info["type"] == "ivf" and info["recall_at_10"] >= 0.95 and info["params"]["nprobe"] < info["params"]["nlist"]
    import faiss

    exact = faiss.IndexFlatIP(d)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    _, got = index.search(queries, 10)
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
    assert recall >= 0.95, (recall, info)
    assert ann.choose(n, d, memory_budget=n * d * 2) == "ivfpq"  # raw vectors over the budget


def test_dataset_sources_coco_file_karpathy_parquet_and_imagefolder(shapes, tmp_path):
    """The dataset kinds training reads, through the project's readers, with their captions."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    import vlm
    import vlm.index

    pipe = vlm.load()
    caps = _captions(shapes)
    files = sorted(caps)[:6]
    # Karpathy root: dataset_coco.json + the folder its filepath entries name
    kroot = tmp_path / "karpathy"
    (kroot / "val2014").mkdir(parents=True)
    entries = []
    for n, f in enumerate(files):
        shutil.copy(f, kroot / "val2014" / Path(f).name)
        entries.append({"filepath": "val2014", "filename": Path(f).name, "cocoid": n, "imgid": n,
                        "split": ("train", "val", "test")[n % 3], "sentences": [{"raw": caps[f][0]}]})
    (kroot / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    # parquet: image structs with bytes, and a caption column
    table = pa.table({"image": [{"bytes": Path(f).read_bytes(), "path": None} for f in files[:4]] +
                      [{"bytes": b"broken", "path": None}],
                      "caption": [caps[f][0] for f in files[:4]] + ["a broken row"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    # an imagefolder with metadata.jsonl
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as out:
        for f in files[:3]:
            shutil.copy(f, folder / Path(f).name)
            out.write(json.dumps({"file_name": Path(f).name, "text": caps[f][0]}) + "\n")
    report = vlm.index.build([shapes / "annotations" / "captions.json", kroot, tmp_path / "rows.parquet", folder],
                             tmp_path / "idx", pipeline=pipe, workers=0)
    assert report.count == 200 + 6 + 4 + 3 and report.skipped == [f"{(tmp_path / 'rows.parquet').resolve()}[4]: "
                                                                  "row has no decodable image"]
    idx = vlm.index.open(tmp_path / "idx")
    for f in files[:3]:
        for where in (Path(f), kroot / "val2014" / Path(f).name, folder / Path(f).name):
            n = idx.row(str(where.resolve()))
            assert n is not None and idx.rows["caption"][n] == caps[f][0], where
    row0 = idx.row(f"{(tmp_path / 'rows.parquet').resolve()}[0]")
    assert idx.rows["caption"][row0] == caps[files[0]][0] and idx.rows["width"][row0] == 64
    vec = _vectors(idx)
    assert np.allclose(vec[row0], vec[idx.row(files[0])], atol=1e-5)  # same image, same vector


def test_captions_generated_for_images_without_one(shapes, tmp_path):
    import vlm
    import vlm.index

    pipe = vlm.load()
    photos = _folder(shapes, tmp_path / "photos", 3)
    vlm.index.build([photos], tmp_path / "plain", pipeline=pipe, workers=0)
    assert vlm.index.open(tmp_path / "plain").rows["caption"] == [None, None, None]
    vlm.index.build([photos], tmp_path / "captioned", pipeline=pipe, workers=0, captions=True)
    idx = vlm.index.open(tmp_path / "captioned")
    expected = pipe.caption([Path(p) for p in idx.paths])
    assert idx.rows["caption"] == expected and all(c.strip() for c in expected)
