"""``vlm serve``: a web page and JSON API over an index (Flask, served by waitress).

    GET  /                      the page: search box, image upload, thumbnail grid with scores
    GET  /api/search?q=TEXT&k=K {"query": TEXT, "results": [{"rank", "path", "score"}, ...]}
    POST /api/search            multipart ``image`` (+ ``k``): query by image, same JSON
    GET  /image?path=P          the indexed image P; /thumb?path=P a small JPEG of it

A bad request gets a 400 with ``{"error": "..."}``. Only paths that are rows of the index are
ever read from disk (looked up by exact string; nothing else is reachable). Run:
``vlm serve INDEX [--host 127.0.0.1] [--port 8000]``.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

MAX_K = 1000
MAX_UPLOAD = 20 << 20  # bytes
THUMB = 160


def create_app(index):
    from flask import Flask, Response, jsonify, request, send_file

    from vlm.errors import VlmError

    app = Flask("vlm.serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    page = (Path(__file__).parent / "static" / "page.html").read_text()
    page = page.replace("__COUNT__", str(len(index))).replace("__MODEL__", _escape(index.info["model"]))

    def bad(message: str, status: int = 400):
        return jsonify({"error": message}), status

    def parse_k():
        raw = request.values.get("k", "10")
        try:
            k = int(raw)
        except ValueError:
            return None, bad(f"k={raw!r}: not a whole number")
        if not 1 <= k <= MAX_K:
            return None, bad(f"k={k}: must be between 1 and {MAX_K}")
        return k, None

    def answer(query: str, hits):
        return jsonify({"query": query, "results": [h.to_dict() for h in hits]})

    @app.get("/")
    def home():
        return Response(page, mimetype="text/html")

    @app.get("/api/search")
    def search_text():
        q = request.args.get("q", "")
        if not q.strip():
            return bad("q: empty query; give some words to search for")
        k, err = parse_k()
        if err:
            return err
        try:
            return answer(q, index.search(text=q, k=k))
        except VlmError as e:
            return bad(str(e))

    @app.post("/api/search")
    def search_image():
        from vlm.io.images import ImageLoadError, load_image

        upload = request.files.get("image")
        if upload is None:
            return bad("image: no file uploaded (multipart field 'image')")
        k, err = parse_k()
        if err:
            return err
        try:
            from PIL import Image

            image = load_image(Image.open(io.BytesIO(upload.read())))
        except ImageLoadError as e:
            return bad(f"image {upload.filename}: {e.reason}")
        except (OSError, ValueError, SyntaxError):
            return bad(f"image {upload.filename}: not an image (cannot identify image format)")
        return answer(upload.filename or "upload", index.search(image=image, k=k))

    def indexed_file(path: str):
        """The file of an indexed row, or None: only exact row paths, only existing files."""
        if not path or index.row(path) is None or not os.path.isfile(path):
            return None
        return path

    @app.get("/image")
    def image():
        path = indexed_file(request.args.get("path", ""))
        if path is None:
            return bad("path: not an image of this index", 404)
        return send_file(path)

    @app.get("/thumb")
    def thumb():
        path = indexed_file(request.args.get("path", ""))
        if path is None:
            return bad("path: not an image of this index", 404)
        data = _thumbnail(path, os.stat(path).st_mtime_ns)
        if data is None:
            return bad("path: the image can no longer be read", 404)
        return Response(data, mimetype="image/jpeg")

    @app.errorhandler(404)
    def not_found(_):
        return bad("no such page", 404)

    @app.errorhandler(405)
    def not_allowed(_):
        return bad("method not allowed", 405)

    @app.errorhandler(413)
    def too_large(_):
        return bad(f"upload larger than {MAX_UPLOAD >> 20} MiB", 413)

    return app


@lru_cache(maxsize=512)  # bounded: at most 512 thumbnails (~5 KB each) are kept
def _thumbnail(path: str, mtime_ns: int):
    from vlm.io.images import ImageLoadError, load_image

    try:
        img = load_image(path)
    except ImageLoadError:
        return None
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _escape(text: str) -> str:
    import html

    return html.escape(str(text))


def serve(index, host: str = "127.0.0.1", port: int = 8000, threads: int = 8) -> None:
    from waitress import serve as waitress_serve

    waitress_serve(create_app(index), host=host, port=port, threads=threads, ident="vlm")
