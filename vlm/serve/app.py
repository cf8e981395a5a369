"""The HTTP routes of ``vlm serve`` (Flask, served by waitress) over a ``Backend`` and a ``Batcher``.

    GET  /                  the page (search grid, "caption this image")
    GET  /healthz /readyz   alive / model loaded and indexes open
    GET  /api/info          model, indexes, sizes, limits
    POST /api/caption       multipart ``images`` files (+ form ``options`` JSON) or JSON {"images": [base64], "options": {}}
    POST /api/classify      {"images", "labels", "templates", "top_k"}   (or multipart + form fields)
    POST /api/embed         {"images", "texts"} -> L2-normalised embeddings
    GET  /api/search?q=TEXT&k=K[&index=NAME]; POST /api/search multipart ``image`` or JSON {q|image|embedding, k, index}
    GET  /image?path=P, /thumb?path=P   an indexed image (only exact row paths of a served index)
    POST /knn-service, GET /indices-list, POST /metadata   clip-retrieval's protocol (vlm.serve.clip_retrieval)

A bad request gets a 4xx with ``{"error": "FIELD: reason"}``; see docs/serve.md.
"""

from __future__ import annotations

import hmac
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from vlm.serve.requests import Limits, RequestError, parse_caption, parse_classify, parse_embed, parse_search

THUMB = 160


def create_app(backend, batcher, limits: Limits = Limits(), api_key: Optional[str] = None):
    from concurrent.futures import TimeoutError as FutureTimeout

    from flask import Flask, Response, jsonify, request, send_file

    from vlm.errors import VlmError
    from vlm.serve.batching import QueueFull
    from vlm.serve.requests import decode_image

    app = Flask("vlm.serve")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body
    page = (Path(__file__).parent / "static" / "page.html").read_text()
    count = sum(len(ix) for ix in backend.indexes.values())
    page = page.replace("__COUNT__", str(count)).replace("__MODEL__", _escape(backend.pipeline.name))

    def bad(message: str, status: int = 400, headers: Optional[dict] = None):
        return jsonify({"error": message}), status, headers or {}

    @app.before_request
    def check_key():
        if api_key is None or request.path in ("/healthz",):
            return None
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
            request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return bad("Authorization: missing or wrong API key (send 'Authorization: Bearer KEY')", 401)
        return None

    def body() -> dict:
        """The request as a dict: JSON, or form fields (JSON-decoded where they parse) + uploads."""
        if request.is_json:
            data = request.get_json(silent=True)
            if not isinstance(data, dict):
                raise RequestError("body", "not a JSON object")
            return data
        data: dict = {}
        for key in request.form:
            values = request.form.getlist(key)
            parsed = []
            for v in values:
                try:
                    parsed.append(json.loads(v) if key in ("options", "labels", "templates", "texts", "embedding")
                                  else v)
                except ValueError:
                    raise RequestError(key, "not valid JSON") from None
            data[key] = parsed[0] if len(parsed) == 1 else parsed
        files = request.files.getlist("images")
        if len(files) > limits.max_images:
            raise RequestError("images", f"{len(files)} images; at most {limits.max_images} per request", 413)
        if files:
            data["images"] = [(f.filename or f"images[{n}]", decode_image(f.read(), f"images[{n}]"))
                              for n, f in enumerate(files)]
        if "image" in request.files:
            f = request.files["image"]
            data["image"] = (f.filename or "upload", decode_image(f.read(), "image"))
        return data

    def run(kind: str, req):
        try:
            future = batcher.submit(kind, req)
        except QueueFull:
            return bad("server busy: the request queue is full; retry later", 429, {"Retry-After": "1"})
        try:
            return jsonify(future.result(timeout=limits.timeout_s))
        except FutureTimeout:
            future.cancel()
            return bad(f"timed out after {limits.timeout_s:g} s waiting for the model", 503, {"Retry-After": "5"})
        except RequestError:
            raise
        except (VlmError, ValueError) as e:
            return bad(str(e))

    @app.errorhandler(RequestError)
    def request_error(e: RequestError):
        return bad(str(e), e.status)

    @app.get("/")
    def home():
        return Response(page, mimetype="text/html")

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        return jsonify({"status": "ready", "model": backend.pipeline.name, "indexes": sorted(backend.indexes)})

    @app.get("/api/info")
    def info():
        import torch

        return jsonify({**backend.info(), "limits": limits.__dict__, "torch_threads": torch.get_num_threads(),
                        "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                                     "wait_share": getattr(batcher, "wait_share", None)}})

    @app.post("/api/caption")
    def caption():
        return run("caption", parse_caption(body(), limits, backend.pipeline))

    @app.post("/api/classify")
    def classify():
        return run("classify", parse_classify(body(), limits))

    @app.post("/api/embed")
    def embed():
        return run("embed", parse_embed(body(), limits))

    @app.route("/api/search", methods=["GET", "POST"])
    def search():
        data = dict(request.args) if request.method == "GET" else body()
        if request.method == "POST":
            data.update({k: v for k, v in request.args.items() if k not in data})
        if request.method == "GET" and "q" not in data:
            data["q"] = ""
        req = parse_search(data, limits)
        try:
            return jsonify(backend.search(req))
        except (VlmError, ValueError) as e:
            if isinstance(e, RequestError):
                raise
            return bad(str(e))

    from vlm.serve import clip_retrieval

    clip_retrieval.add_routes(app, backend, limits)

    def indexed_file(path: str):
        """The file of an indexed row, or None: only exact row paths, only existing files."""
        if not path or all(ix.row(path) is None for ix in backend.indexes.values()) or not os.path.isfile(path):
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
        return bad(f"body: larger than {limits.max_body} bytes", 413)

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
