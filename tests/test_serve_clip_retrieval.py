"""clip-retrieval's own ClipClient (clip_client.py from its PyPI package, installed --no-deps beside
requests) against `vlm serve` on 127.0.0.1, in a subprocess: query by text, by image and by
embedding; /indices-list and /metadata; image_url refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import start_server, stop
from test_serve_api import call

pytest.importorskip("faiss")
pytest.importorskip("flask")
pytest.importorskip("requests")

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"

CLIENT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("clip_client", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
client = mod.ClipClient(url=sys.argv[2] + "knn-service", indice_name=sys.argv[3], num_images=4)
q = json.loads(sys.argv[4])
print(json.dumps(client.query(**q)))
"""


@pytest.fixture(scope="module")
def clip_client(tmp_path_factory) -> Path:
    """clip_client.py of the pinned PyPI package (pip install --no-deps: none of its heavy deps)."""
    target = tmp_path_factory.mktemp("clip_retrieval")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          CLIP_RETRIEVAL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip install {CLIP_RETRIEVAL} failed: {out.stderr[-2000:]}"
    path = target / "clip_retrieval" / "clip_client.py"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    import vlm.index
    from vlm.data.shapes_dir import generate_shapes

    root = tmp_path_factory.mktemp("serve_cr")
    vlm.index.build([generate_shapes(root / "shapes", 16, seed=7)], root / "idx", workers=0)
    return root / "idx"


@pytest.fixture(scope="module")
def server(index_dir):
    proc, url, _ = start_server([str(index_dir)])
    yield url
    stop(proc)


def client_query(clip_client, server, index_dir, **query):
    out = subprocess.run([sys.executable, "-c", CLIENT, str(clip_client), server, index_dir.name, json.dumps(query)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_clip_client_text_image_embedding(clip_client, server, index_dir):
    import vlm.index

    index = vlm.index.open(index_dir)
    by_text = client_query(clip_client, server, index_dir, text="a red star")
    want = index.search(text="a red star", k=4)
    assert [r["id"] for r in by_text] == [index.row(h.path) for h in want]
    assert [r["similarity"] for r in by_text] == pytest.approx([h.score for h in want], abs=1e-5)
    assert all(r["caption"] == index.rows["caption"][r["id"]] for r in by_text)
    query_image = index.paths[3]
    by_image = client_query(clip_client, server, index_dir, image=query_image)
    assert by_image[0]["id"] == 3 and by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    vec = vlm.load().encode_texts(["a red star"])[0].tolist()
    by_vec = client_query(clip_client, server, index_dir, embedding_input=vec)
    assert [r["id"] for r in by_vec] == [r["id"] for r in by_text]


def test_served_url_is_the_image(server, index_dir):
    import urllib.request

    status, hits, _ = call(server + "knn-service", {"text": "a blue triangle", "num_images": 2,
                                                     "indice_name": index_dir.name, "use_safety_model": True,
                                                     "aesthetic_score": 9, "deduplicate": True})
    assert status == 200 and len(hits) == 2
    with urllib.request.urlopen(hits[0]["url"], timeout=30) as r:
        import vlm.index

        assert r.read() == Path(vlm.index.open(index_dir).paths[hits[0]["id"]]).read_bytes()


def test_indices_list_metadata_and_refusals(server, index_dir):
    status, names, _ = call(server + "indices-list")
    assert status == 200 and names == [index_dir.name]
    status, metas, _ = call(server + "metadata", {"ids": [0, 2], "indice_name": index_dir.name})
    assert status == 200 and [m["id"] for m in metas] == [0, 2] and "caption" in metas[0]["metadata"]
    status, data, _ = call(server + "metadata", {"ids": [99], "indice_name": index_dir.name})
    assert status == 400 and data["error"].startswith("ids:")
    status, data, _ = call(server + "knn-service", {"image_url": "http://169.254.169.254/", "indice_name": index_dir.name})
    assert status == 400 and data["error"].startswith("image_url:")
    status, data, _ = call(server + "knn-service", {"text": "x", "modality": "text"})
    assert status == 400 and data["error"].startswith("modality:")
    status, data, _ = call(server + "knn-service", {"text": "x", "indice_name": "nope"})
    assert status == 404 and data["error"].startswith("index")
