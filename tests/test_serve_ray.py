"""vlm serve-ray: the server as a Ray Serve deployment on a local Ray instance this test starts
(2 CPU replicas), against the single-process ``vlm serve`` on the same index: the same requests
get the same answers, concurrent queries are answered through Ray's batching, and when the
command stops no Ray process is left.

Ray comes with the test extra (``pip install -e ".[test]"`` pulls in ``vlm[ray]``); without it
this module fails rather than skips, so CI cannot pass without running it.
Run: pytest -q tests/test_serve_ray.py
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow


def _ray_installed() -> None:
    try:
        import ray.serve  # noqa: F401
    except ImportError as e:
        pytest.fail(f'Ray Serve is missing ({e}); the test extra installs it: pip install -e ".[test]"')


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    import vlm.index
    from vlm.data.shapes_dir import generate_shapes

    root = tmp_path_factory.mktemp("serve_ray")
    vlm.index.build([generate_shapes(root / "shapes", 24, seed=5)], root / "idx", workers=0)
    return root / "idx"


def session_processes(sid: int) -> list[str]:
    """Live processes of session ``sid`` (the command's, started with start_new_session)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_text().replace(chr(0), ' ')[:80]}")
        except (OSError, IndexError, ValueError):
            pass
    return found


class Server:
    """A server command in its own session; ``url`` once it printed its address."""

    def __init__(self, argv: list[str], timeout: float = 240, env: dict | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", *argv], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stderr], daemon=True).start()
        self.url, self.seen, start, deadline = None, [], time.time(), time.time() + timeout
        while self.url is None and time.time() < deadline and self.proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if " images at http://" in line:
                self.url = line.split(" images at ")[1].split()[0]
        self.startup_s = time.time() - start
        if self.url is None:
            self.stop()
            pytest.fail(f"{argv[0]} did not start: {''.join(self.seen)[-3000:]}")

    def stop(self) -> list[str]:
        """SIGTERM, as a service manager stops it; what of its session is still alive after."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=180)  # Ray takes tens of seconds to stop on a loaded machine
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        left = session_processes(self.proc.pid)
        for line in left:  # clean up whatever leaked before failing on it
            os.kill(int(line.split()[0]), signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        return left


@pytest.fixture(scope="module")
def ray_dir():
    """Ray's session folder (RAY_TMPDIR), short: Ray's socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vlmray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(index_dir, ray_dir):
    _ray_installed()
    single = Server(["serve", str(index_dir), "--max-batch", "8", "--max-wait-ms", "50", "--port", "0"])
    try:
        ray = Server(["serve-ray", str(index_dir), "--replicas", "2", "--max-batch", "8", "--max-wait-ms", "50",
                      "--port", str(free_port())], timeout=600, env={"RAY_TMPDIR": str(ray_dir)})
    except BaseException:
        single.stop()
        raise
    print(f"\nvlm serve-ray start-up: {ray.startup_s:.1f}s (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    yield single, ray
    left_single, left_ray = single.stop(), ray.stop()
    assert not left_single, f"vlm serve left processes: {left_single}"
    assert not left_ray, f"vlm serve-ray left Ray processes running: {left_ray}"
    assert ray.proc.returncode == 0, f"vlm serve-ray exit status {ray.proc.returncode}: {''.join(ray.seen)[-2000:]}"


def request(base: str, path: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(base.rstrip("/") + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, dict]:
    boundary = "vlmraytestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def as_json(payload: dict) -> tuple[bytes, dict]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


def requests_for(index_dir: Path) -> list[tuple[str, str, bytes | None, dict | None]]:
    """(name, path, body, headers): every route, good and bad requests."""
    images = sorted((index_dir.parent / "shapes" / "images").glob("*.png"))
    photo = images[3].read_bytes()
    b64, b64second = (base64.b64encode(p.read_bytes()).decode() for p in (images[3], images[7]))
    first = str(images[0])
    out = [(f"search {q!r} k={k}", "/api/search?" + urllib.parse.urlencode({"q": q, "k": k}), None, None)
           for q, k in [("red star", 3), ("blue triangle", 5), ("a green circle", 24), ("square", 1)]]
    out += [
        ("empty query", "/api/search?q=", None, None),
        ("bad k", "/api/search?q=star&k=x", None, None),
        ("k too large", "/api/search?q=star&k=100000", None, None),
        ("image query", "/api/search?k=4", *multipart("image", "q.png", photo)),
        ("not an image", "/api/search?k=4", *multipart("image", "q.png", b"not an image at all")),
        ("no upload", "/api/search", b"", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("indexed image", "/image?" + urllib.parse.urlencode({"path": first}), None, None),
        ("outside the index", "/image?" + urllib.parse.urlencode({"path": "/etc/passwd"}), None, None),
        ("thumbnail", "/thumb?" + urllib.parse.urlencode({"path": first}), None, None),
        ("no such page", "/nope", None, None),
        ("the page", "/", None, None),
        ("healthz", "/healthz", None, None),
        ("readyz", "/readyz", None, None),
        ("info", "/api/info", None, None),
        ("embed", "/api/embed", *as_json({"texts": ["a red star", "blue"], "images": [b64]})),
        ("caption", "/api/caption", *as_json({"images": [b64, b64second]})),
        ("classify", "/api/classify", *as_json({"images": [b64], "labels": ["red star", "blue triangle", "green circle"],
                                                 "top_k": 2})),
        ("classify without labels", "/api/classify", *as_json({"images": [b64]})),
        ("caption of no image", "/api/caption", *as_json({"images": ["bm90IGFuIGltYWdl"]})),
        ("clip-retrieval indices", "/indices-list", None, None),
        ("clip-retrieval text query", "/knn-service", *as_json({"text": "a red star", "modality": "image",
                                                                 "num_images": 3, "indice_name": index_dir.name})),
    ]
    return out


def test_same_requests_same_answers(servers, index_dir):
    single, ray = servers
    for name, path, body, headers in requests_for(index_dir):
        want = request(single.url, path, body, headers)
        got = request(ray.url, path, body, headers)
        assert got[0] == want[0], f"{name}: status {got[0]} on Ray, {want[0]} single-process: {got[2][:300]!r}"
        assert got[1] == want[1], f"{name}: content type {got[1]!r} on Ray, {want[1]!r} single-process"
        if want[1].startswith("application/json"):
            # links the server makes (clip-retrieval's "url") name its own address: compare without it
            got_json = json.loads(got[2].replace(ray.url.rstrip("/").encode(), b"SERVER"))
            want_json = json.loads(want[2].replace(single.url.rstrip("/").encode(), b"SERVER"))
            if path == "/api/info":  # the one thing that differs: Ray's @serve.batch waits max_wait_ms flat,
                # vlm serve's batcher at most 5% of its last batch's run time as well (docs/serve.md)
                assert (got_json["batching"].pop("wait_share"), want_json["batching"].pop("wait_share")) == (None, 0.05)
            assert got_json == want_json, f"{name}: other JSON on Ray"
        else:
            assert got[2] == want[2], f"{name}: other bytes on Ray"


def test_upload_over_the_cap_is_refused_by_the_same_handler(servers):
    from vlm.serve.requests import Limits

    MAX_UPLOAD = Limits().max_body

    single, ray = servers
    body, headers = multipart("image", "big.png", b"\0" * (MAX_UPLOAD + 1))
    want, got = request(single.url, "/api/search", body, headers), request(ray.url, "/api/search", body, headers)
    assert got[0] == want[0] == 413
    assert json.loads(got[2]) == json.loads(want[2])


def batch_sizes(ray_dir: Path) -> list[int]:
    """The batch sizes the replicas logged (vlm.serve.ray_app logs each @serve.batch call)."""
    sizes = []
    for log in ray_dir.rglob("replica_*.log"):
        sizes += [int(n) for n in re.findall(r"vlm: ran (\d+) requests in one batch", log.read_text())]
    return sizes


def test_concurrent_requests_are_batched_and_answered_alike(servers, ray_dir, index_dir):
    """16 caption requests at once across 2 replicas: Ray's @serve.batch runs them together
    (the replicas log batches of more than one request); each caption is the one the
    single-process server gives the same image sent alone."""
    single, ray = servers
    images = sorted((index_dir.parent / "shapes" / "images").glob("*.png"))[:16]
    bodies = [as_json({"images": [base64.b64encode(p.read_bytes()).decode()]}) for p in images]
    alone = [json.loads(request(single.url, "/api/caption", *b)[2]) for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: request(ray.url, "/api/caption", *b), bodies))
    for path, want, (status, _, body) in zip(images, alone, answers):
        assert status == 200, body[:300]
        assert json.loads(body) == want, path.name
    deadline = time.time() + 30  # Ray writes replica logs a moment after the answers
    while not (batches := batch_sizes(ray_dir)) and time.time() < deadline:
        time.sleep(0.5)
    assert batches and max(batches) > 1, (
        f"no batch of more than one request in the replica logs: {batches} "
        f"(logs: {sorted(str(p) for p in ray_dir.rglob('*.log'))[:8]})")
