"""vlm serve as a model server, over real HTTP on 127.0.0.1: caption, classify, embed, search by
vector and index name, health/info, the API key, the limits (413, 401, 400 naming the field, 429
with Retry-After), and dynamic batching: concurrent answers identical to lone ones and to the CLI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import start_server, stop
from conftest import REPO

pytest.importorskip("faiss")
pytest.importorskip("flask")

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    import vlm.index
    from vlm.data.shapes_dir import generate_shapes

    root = tmp_path_factory.mktemp("serve_api")
    shapes = generate_shapes(root / "shapes", 24, seed=5)
    vlm.index.build([shapes], root / "idx", workers=0)
    return root / "idx"


@pytest.fixture(scope="module")
def server(index_dir):
    proc, url, _ = start_server([str(index_dir), "--max-batch", "8", "--max-wait-ms", "20",
                                 "--api-key-env", "VLM_TEST_KEY"], {"VLM_TEST_KEY": KEY})
    yield url
    stop(proc)


def call(url: str, payload=None, key: str | None = KEY, raw: bytes | None = None, headers: dict | None = None):
    hdrs = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = raw
    if payload is not None:
        data, hdrs["Content-Type"] = json.dumps(payload).encode(), "application/json"
    req = urllib.request.Request(url, data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def images(index_dir, n):
    import vlm.index

    return vlm.index.open(index_dir).paths[:n]


def b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def cli_json(*args) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "vlm.cli.main", *args, "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_health_ready_info(server, index_dir):
    status, data, _ = call(server + "healthz", key=None)
    assert status == 200 and data == {"status": "ok"}
    status, data, _ = call(server + "readyz")
    assert status == 200 and data["indexes"] == [index_dir.name]
    status, data, _ = call(server + "api/info")
    assert status == 200 and data["indexes"][index_dir.name]["size"] == 24 and data["dim"] > 0
    assert data["limits"]["max_images"] == 8 and data["batching"]["max_batch"] == 8
    assert data["torch_threads"] == 1  # OMP_NUM_THREADS=1 (tests/serve_helpers.py): the user's setting is kept


def test_api_key_required(server):
    for key in (None, "wrong"):
        status, data, _ = call(server + "api/info", key=key)
        assert status == 401 and "API key" in data["error"]
    status, data, _ = call(server + "api/info", key=None, headers={"X-API-Key": KEY})
    assert status == 200


def test_caption_lone_concurrent_multipart_and_cli_agree(server, index_dir):
    paths = images(index_dir, 6)
    cli = {Path(r["image"]).name: r["caption"] for r in cli_json("caption", *paths)}
    lone = [call(server + "api/caption", {"images": [b64(p)]})[1]["results"][0]["caption"] for p in paths]
    assert lone == [cli[Path(p).name] for p in paths]
    answers: dict = {}

    def worker(n):
        answers[n] = call(server + "api/caption", {"images": [b64(paths[n])]})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [answers[n][1]["results"][0]["caption"] for n in range(len(paths))] == lone
    boundary = "vlmb"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{Path(p).name}\"\r\n"
                    f"Content-Type: image/png\r\n\r\n".encode() + Path(p).read_bytes() + b"\r\n" for p in paths[:2])
    body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"options\"\r\n\r\n{{\"max_tokens\": 30}}\r\n" \
            f"--{boundary}--\r\n".encode()
    status, data, _ = call(server + "api/caption", raw=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and [r["caption"] for r in data["results"]] == lone[:2]
    assert data["results"][0]["image"] == Path(paths[0]).name
    status, data, _ = call(server + "api/caption", {"images": [b64(paths[0])], "options": {"beams": 2}})
    assert status == 200 and data["results"][0]["caption"] == cli_json("caption", paths[0], "--beams", "2")[0]["caption"]


def test_classify_matches_cli(server, index_dir):
    paths = images(index_dir, 3)
    labels = ["red star", "blue triangle", "green circle", "yellow square"]
    cli = cli_json("classify", *paths, "--labels", ",".join(labels), "--top-k", "2")
    status, data, _ = call(server + "api/classify", {"images": [b64(p) for p in paths], "labels": labels, "top_k": 2})
    assert status == 200
    for got, want in zip(data["results"], cli):
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=1e-5)


def test_embed_is_normalised_and_matches_the_api(server, index_dir):
    import vlm

    path = images(index_dir, 1)[0]
    status, data, _ = call(server + "api/embed", {"images": [b64(path)], "texts": ["a red star"]})
    assert status == 200
    img, txt = np.array(data["images"][0]["embedding"]), np.array(data["texts"][0]["embedding"])
    assert np.linalg.norm(img) == pytest.approx(1, abs=1e-5) and np.linalg.norm(txt) == pytest.approx(1, abs=1e-5)
    pipe = vlm.load()
    np.testing.assert_allclose(img, pipe.encode_images([path])[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(txt, pipe.encode_texts(["a red star"])[0].numpy(), atol=1e-5)


def test_search_by_vector_and_index_name(server, index_dir):
    status, by_text, _ = call(server + "api/search?q=a+red+star&k=3")
    assert status == 200 and len(by_text["results"]) == 3
    vec = call(server + "api/embed", {"texts": ["a red star"]})[1]["texts"][0]["embedding"]
    status, by_vec, _ = call(server + "api/search", {"embedding": vec, "k": 3, "index": index_dir.name})
    assert status == 200 and [h["path"] for h in by_vec["results"]] == [h["path"] for h in by_text["results"]]
    status, data, _ = call(server + "api/search", {"embedding": vec, "index": "nope"})
    assert status == 404 and data["error"].startswith("index:")
    status, data, _ = call(server + "api/search", {"embedding": vec[:5]})
    assert status == 400 and data["error"].startswith("embedding:")


@pytest.mark.parametrize("route,payload,status,field", [
    ("api/caption", {"images": []}, 400, "images"),
    ("api/caption", {"images": ["%%%"]}, 400, "images[0]"),
    ("api/caption", {"images": [base64.b64encode(b"not an image").decode()]}, 400, "images[0]"),
    ("api/caption", {"images": ["aGk="] * 9}, 413, "images"),
    ("api/caption", {"images": ["aGk="], "options": {"beams": 0}}, 400, "options.beams"),
    ("api/caption", {"images": ["aGk="], "options": {"nope": 1}}, 400, "options.nope"),
    ("api/classify", {"images": ["aGk="], "labels": []}, 400, "labels"),
    ("api/classify", {"images": ["aGk="], "labels": ["x"] * 1001}, 413, "labels"),
    ("api/classify", {"images": ["aGk="], "labels": ["a", "b"], "top_k": 0}, 400, "top_k"),
    ("api/embed", {"texts": ["x"] * 65}, 413, "texts"),
    ("api/embed", {"texts": [3]}, 400, "texts[0]"),
    ("api/embed", {}, 400, "images"),
    ("api/search", {"q": "a star", "k": 1001}, 400, "k"),
    ("api/search", {"q": "a star", "embedding": [1.0]}, 400, "q"),
])
def test_bad_requests_name_the_field(server, route, payload, status, field):
    got, data, _ = call(server + route, payload)
    assert got == status and data["error"].startswith(field + ":"), data


def test_body_cap_and_pixel_cap(server):
    status, data, _ = call(server + "api/embed", raw=b"x" * (21 << 20), headers={"Content-Type": "application/json"})
    assert status == 413 and data["error"].startswith("body:")
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # 400 MP, a few hundred KB: a decompression bomb
    status, data, _ = call(server + "api/caption", {"images": [base64.b64encode(buf.getvalue()).decode()]})
    assert status == 413 and "decompression-bomb" in data["error"] and data["error"].startswith("images[0]:")


@pytest.mark.slow
def test_full_queue_gets_429_with_retry_after(index_dir):
    proc, url, _ = start_server([str(index_dir), "--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0"])
    try:
        path = images(index_dir, 1)[0]
        answers: list = []
        lock = threading.Lock()

        def worker():
            got = call(url + "api/caption", {"images": [b64(path)], "options": {"max_tokens": 30, "beams": 3}})
            with lock:
                answers.append(got)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        codes = sorted(a[0] for a in answers)
        assert len(codes) == 8 and 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
        busy = next(a for a in answers if a[0] == 429)
        assert busy[2].get("Retry-After") == "1" and "queue is full" in busy[1]["error"]
    finally:
        stop(proc)


@pytest.mark.slow
def test_non_local_host_without_key_warns_once(index_dir):
    proc, url, seen = start_server([str(index_dir), "--host", "0.0.0.0"])
    stop(proc)
    assert sum("warning" in line for line in seen) == 1 and "without an API key" in "".join(seen)


def test_precision_flag_serves_the_reduced_precision_model(index_dir):
    """vlm serve --precision bf16 answers as vlm.load(precision="bf16") does, and /api/info says so."""
    import vlm

    path = images(index_dir, 1)[0]
    proc, url, _ = start_server(["--model", "default", "--precision", "bf16"])
    try:
        status, info, _ = call(url + "api/info")
        assert status == 200 and info["precision"] == "bf16"
        status, body, _ = call(url + "api/caption", {"images": [b64(path)]})
        assert status == 200
        assert body["results"][0]["caption"] == vlm.load(precision="bf16").caption(str(path))[0]
    finally:
        stop(proc)
    proc = subprocess.run([sys.executable, "-m", "vlm.cli.main", "serve", "--model", "default", "--precision", "fp16"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--precision" in proc.stderr and "Traceback" not in proc.stderr


def test_index_of_other_weights_is_refused_in_one_line(index_dir, tmp_path):
    """An index whose fingerprint is not the served model's weights: one line naming it, exit 2."""
    other = tmp_path / "other"
    shutil.copytree(index_dir, other)
    meta = json.loads((other / "index.json").read_text())
    meta["fingerprint"] = "0" * 32  # as if built by a model with other weights
    (other / "index.json").write_text(json.dumps(meta))
    r = subprocess.run([sys.executable, "-m", "vlm.cli.main", "serve", str(index_dir), str(other), "--port", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(other) in lines[0] and "other weights" in lines[0], r.stderr


def test_request_timeout_is_503_with_retry_after(index_dir):
    """--timeout 0.001 s against a 16-image beam-search caption (far more than a millisecond of work
    on any machine): a 503, and the server still answers afterwards."""
    proc, url, _ = start_server([str(index_dir), "--timeout", "0.001"])
    try:
        body = {"images": [b64(p) for p in images(index_dir, 16)], "options": {"beams": 3}}
        status, data, hdrs = call(url + "api/caption", body)
        assert status == 503 and "error" in data and int(hdrs["Retry-After"]) >= 1, (status, data)
        assert call(url + "healthz")[0] == 200
    finally:
        stop(proc)
