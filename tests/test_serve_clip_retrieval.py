"""clip-retrieval's own ClipClient (clip_client.py from its PyPI package, installed --no-deps beside
requests) against `vlm serve` on 127.0.0.1, in a subprocess: query by text, by image and by
embedding; /indices-list and /metadata; image_url refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import server  # noqa: F401  (the module's `vlm serve` fixture, over its index_dir)
from test_serve_api import call

pytest.importorskip("faiss")
pytest.importorskip("flask")
pytest.importorskip("requests")

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"

CLIENT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("clip_client", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
q = json.loads(sys.argv[4])
client = mod.ClipClient(url=sys.argv[2] + "knn-service", indice_name=sys.argv[3], num_images=q.pop("num_images", 4),
                        deduplicate=q.pop("deduplicate", False))
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
    shapes = Path(generate_shapes(root / "shapes", 16, seed=7))
    (root / "copies").mkdir()  # a second source: an exact duplicate of one scene, cosine 1 to its row
    (root / "copies" / "copy.png").write_bytes(sorted((shapes / "images").glob("*.png"))[3].read_bytes())
    vlm.index.build([str(shapes), str(root / "copies")], root / "idx", workers=0)
    return root / "idx"


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


@pytest.mark.slow
def test_deduplicate_drops_near_duplicate_images_as_clip_retrieval_does(clip_client, server, index_dir):
    import numpy as np

    import vlm.index
    from vlm.index.dedup import THRESHOLD

    index = vlm.index.open(index_dir)
    copy = next(n for n, p in enumerate(index.paths) if p.endswith("copy.png"))
    image = index.paths[copy]
    same = (index.vectors_of(range(len(index))) @ index.vectors_of([copy])[0]) > 1 - 1e-5
    original = next(n for n in np.flatnonzero(same) if n != copy)
    plain = client_query(clip_client, server, index_dir, image=image, num_images=8)
    assert {r["id"] for r in plain[:2]} == {original, copy}  # both at cosine 1 without deduplication
    deduped = client_query(clip_client, server, index_dir, image=image, num_images=8, deduplicate=True)
    ids = [r["id"] for r in deduped]
    assert len(ids) < 8 and sum(i in (original, copy) for i in ids) == 1  # one of the pair, nothing added
    vectors = index.vectors_of(ids)
    cos = vectors @ vectors.T
    assert (cos[np.triu_indices(len(ids), 1)] < THRESHOLD).all()  # no near duplicates left
    dropped = [r["id"] for r in plain if r["id"] not in ids]
    kept = index.vectors_of(ids)
    for row in dropped:  # each dropped hit was a near duplicate of a better-ranked one
        assert (kept @ index.vectors_of([row])[0]).max() >= THRESHOLD - 1e-6 or \
            any((index.vectors_of([d])[0] @ index.vectors_of([row])[0]) >= THRESHOLD for d in dropped if d != row)


def test_near_duplicate_groups_keep_their_best_ranked_hit():
    import numpy as np

    from vlm.index.dedup import near_duplicates_dropped

    e = np.eye(4, dtype=np.float32)
    a, b = e[0], (0.97 * e[0] + np.sqrt(1 - 0.97 ** 2) * e[1])   # cos(a, b) = 0.97
    c = 0.97 * b + np.sqrt(1 - 0.97 ** 2) * e[2]                 # cos(b, c) = 0.97, cos(a, c) < 0.94
    c /= np.linalg.norm(c)
    vectors = np.stack([e[3], b, a, c])  # ranks: an unrelated hit, then b, a, c
    assert near_duplicates_dropped(vectors) == [0, 1]  # a and c chain through b, the best-ranked of them
    assert near_duplicates_dropped(vectors, threshold=0.99) == [0, 1, 2, 3]


def test_served_url_is_the_image(server, index_dir):
    import urllib.request

    status, hits, _ = call(server + "knn-service", {"text": "a blue triangle", "num_images": 2,
                                                     "indice_name": index_dir.name, "use_safety_model": True,
                                                     "aesthetic_score": 9, "deduplicate": False})
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
