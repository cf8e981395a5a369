"""vlm serve in a subprocess on 127.0.0.1: the JSON API, 400s for bad requests, path traversal
refused, a bounded concurrent load loop (p50/p99), and the page in Debian's headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from serve_helpers import server  # noqa: F401  (the module's `vlm serve` fixture, over its index_dir)

pytest.importorskip("faiss")
pytest.importorskip("flask")

DOCS_SCREENSHOT = REPO / "docs" / "search_page.png"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    import vlm.index
    from vlm.data.shapes_dir import generate_shapes

    root = tmp_path_factory.mktemp("serve")
    shapes = generate_shapes(root / "shapes", 80, seed=3)
    (shapes / "secret.txt").write_text("not for the web")
    vlm.index.build([shapes], root / "idx", workers=0)
    return root / "idx"


def get(url: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def api(server: str, **params):
    status, kind, body = get(server + "api/search?" + urllib.parse.urlencode(params))
    return status, json.loads(body)


def test_binds_localhost_and_answers_the_json_api(server, index_dir):
    assert server.startswith("http://127.0.0.1:")
    status, data = api(server, q="a red star", k=4)
    assert status == 200 and data["query"] == "a red star"
    hits = data["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and set(hits[0]) == {"rank", "path", "score", "caption", "ood"}  # the default model has an OOD profile
    assert data["index"] == index_dir.name
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(3))
    import vlm.index

    expected = vlm.index.open(index_dir).search(text="a red star", k=4)
    assert [h["path"] for h in hits] == [h.path for h in expected]
    status, kind, body = get(server + "image?path=" + urllib.parse.quote(hits[0]["path"]))
    assert status == 200 and body == Path(hits[0]["path"]).read_bytes()
    status, kind, body = get(server + "thumb?path=" + urllib.parse.quote(hits[0]["path"]))
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, kind, page = get(server)
    assert status == 200 and b'id="q"' in page and b'type="file"' in page and b"80 images indexed" in page


def test_query_by_uploaded_image(server, index_dir):
    import vlm.index

    path = vlm.index.open(index_dir).paths[7]
    boundary = "vlmtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n3\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, raw = get(server + "api/search", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    data = json.loads(raw)
    assert status == 200 and data["query"] == "q.png" and data["results"][0]["path"] == path
    assert data["results"][0]["score"] == pytest.approx(1.0, abs=1e-4) and len(data["results"]) == 3
    bad = body.replace(Path(path).read_bytes(), b"not an image at all")
    status, _, raw = get(server + "api/search", bad, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and "not an image" in json.loads(raw)["error"]


@pytest.mark.parametrize("params,message", [
    ({"q": "", "k": 3}, "empty query"), ({"q": "   "}, "empty query"), ({"k": 3}, "empty query"),
    ({"q": "a star", "k": "x"}, "not a whole number"), ({"q": "a star", "k": 0}, "between 1 and"),
    ({"q": "a star", "k": 10**6}, "between 1 and")])
def test_bad_requests_get_400_json(server, params, message):
    status, data = api(server, **params)
    assert status == 400 and message in data["error"]


def test_only_indexed_paths_are_served(server, index_dir):
    import vlm.index

    indexed = Path(vlm.index.open(index_dir).paths[0])
    secret = indexed.parent.parent / "secret.txt"
    for path in ["/etc/passwd", str(secret), str(indexed.parent / ".." / "secret.txt"),
                 str(indexed.parent / ".." / "images" / indexed.name), str(index_dir / "index.json"), ""]:
        for route in ("image", "thumb"):
            status, kind, body = get(server + f"{route}?path=" + urllib.parse.quote(path))
            assert status == 404 and b"not an image of this index" in body, (route, path)
    for raw in ("image/../../etc/passwd", "..%2f..%2fetc%2fpasswd", "static/../../../etc/passwd"):
        status, _, body = get(server + raw)
        assert status == 404 and b"root:" not in body, raw


def test_bounded_concurrent_load(server):
    """64 requests from 8 threads against 127.0.0.1: every one answered, p50/p99 measured."""
    queries = ["a red star", "a blue triangle", "two green circles", "a yellow square"] * 16
    times, errors = [], []

    def worker(qs):
        for q in qs:
            start = time.perf_counter()
            status, data = api(server, q=q, k=5)
            times.append(time.perf_counter() - start)
            if status != 200 or len(data["results"]) != 5:
                errors.append((status, data))

    threads = [threading.Thread(target=worker, args=(queries[i::8],)) for i in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - start
    assert not errors and len(times) == 64 and wall < 120
    p50, p99 = np.percentile(times, 50) * 1000, np.percentile(times, 99) * 1000
    print(f"\nserve load: 64 requests, 8 threads, {wall:.2f} s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium binary (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,800", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.skip("no chromedriver next to Chromium (Debian: apt-get install chromium-driver)")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        driver.get(server)
        box = driver.find_element(By.ID, "q")
        box.clear()
        box.send_keys("a blue triangle", Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .hit")) == 12)
        hits = driver.find_elements(By.CSS_SELECTOR, "#grid .hit")
        assert hits[0].find_element(By.CLASS_NAME, "score").text.startswith("#1")
        assert "/image?path=" in hits[0].get_attribute("href") and hits[0].get_attribute("target") == "_blank"
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"))
        assert "12 results for a blue triangle" in driver.find_element(By.ID, "status").text
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
        if os.environ.get("VLM_DOCS_SCREENSHOT"):
            shutil.copy(shot, DOCS_SCREENSHOT)
        assert hits[0].find_element(By.CLASS_NAME, "caption").text  # each result shows its caption
        import vlm

        upload = sorted(Path(hits[0].get_attribute("title")).parent.glob("*.png"))[0]
        driver.find_element(By.ID, "labels").send_keys("<b>red</b> star, blue triangle")
        driver.find_element(By.ID, "caption-image").send_keys(str(upload))
        WebDriverWait(driver, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#caption-out .label")) == 2)
        pipe = vlm.load()
        assert driver.find_element(By.CSS_SELECTOR, "#caption-out .caption").text == pipe.caption([str(upload)])[0]
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#caption-out .label")]
        assert any(t.startswith("<b>red</b> star ") for t in labels)  # user text shown as text, not markup
        assert not driver.find_elements(By.CSS_SELECTOR, "#caption-out b")
        driver.get(hits[0].get_attribute("href"))  # clicking opens the full image
    finally:
        driver.quit()
