"""Run a WSGI app (the Flask server of vlm.serve) inside an async Ray Serve replica.

Ray Serve hands a replica a Starlette request on its event loop; the vlm server is a WSGI app whose
handlers block (on the model, or on a batch). :func:`call_wsgi` builds the PEP 3333 environ from
the request, runs the app on a thread of the replica's pool so the loop stays free to gather batches, and turns
the app's answer back into a Starlette response. At most ``max_body + 1`` bytes of a body are kept:
a larger one reaches the app empty, with its true length, so the app's own 413 answers it.
"""

from __future__ import annotations

import asyncio
import io
import sys
from concurrent.futures import Executor
from typing import Callable


async def read_body(request, max_body: int) -> tuple[bytes, int]:
    """The body (kept up to ``max_body + 1`` bytes) and the length to report to the app. A longer
    body is read to its end and dropped: answering before the client has sent it all would reset
    the connection instead of delivering the app's 413."""
    declared = request.headers.get("content-length")
    chunks, size = [], 0
    async for chunk in request.stream():
        if size <= max_body:
            chunks.append(chunk)
        size += len(chunk)
    if declared is not None and declared.isdigit() and int(declared) > size:
        size = int(declared)
    body = b"".join(chunks)
    return (body, size) if size <= max_body else (b"", size)  # the app refuses it by its length


def environ_for(request, body: bytes, length: int) -> dict:
    """The WSGI environ of a Starlette request (PEP 3333: str values hold latin-1 bytes)."""
    scope = request.scope
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "CONTENT_LENGTH": str(length),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name != "CONTENT_LENGTH":
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def run_wsgi(app: Callable, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the app once: its status code, raw headers and whole body."""
    started: dict = {}

    def start_response(status: str, headers: list, exc_info=None):
        started["status"], started["headers"] = status, headers
        return lambda data: None  # the legacy write() callable; Flask never uses it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in started["headers"]]
    return int(started["status"].split(" ", 1)[0]), raw, body


async def call_wsgi(app: Callable, request, max_body: int, threads: Executor):
    """Answer a Starlette request with a WSGI app, the app running on one of ``threads``."""
    from starlette.responses import Response

    body, length = await read_body(request, max_body)
    status, headers, content = await asyncio.get_running_loop().run_in_executor(
        threads, run_wsgi, app, environ_for(request, body, length))
    response = Response(content=content, status_code=status)
    response.raw_headers = [h for h in headers if h[0] != b"content-length"] + [
        (b"content-length", str(len(content)).encode())]
    return response
