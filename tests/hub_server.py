"""A local HTTP server in the Hugging Face Hub's URL layout, for download tests without a network.

It answers what ``huggingface_hub`` (hf_hub_download, snapshot_download) asks the Hub:

- ``HEAD|GET /{repo}/resolve/{revision}/{file}``: the file, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length``; a missing file is 404 with ``X-Error-Code: EntryNotFound``.
- ``GET /api/models/{repo}[/revision/{revision}]``: ``{"id", "sha", "siblings"}``.
- ``GET /api/models/{repo}/tree/{revision}``: the file list (``type, path, size, oid``).

Point the client at it with ``HF_ENDPOINT=http://127.0.0.1:PORT``. Every request is logged in
``server.requests`` as ``(method, path)``, so a test can tell a download from a cache hit.

    with HubServer({"org/model": {"config.json": Path("config.json")}}) as hub:
        env = {"HF_ENDPOINT": hub.url}
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubServer:
    """Serves ``repos`` ({repo_id: {filename: local path}}) on 127.0.0.1 at a free port."""

    def __init__(self, repos: dict[str, dict[str, Path]]):
        self.repos = repos
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def downloads(self, filename: str) -> int:
        """How many GETs of a file (any repo, any revision) the server has answered."""
        return sum(m == "GET" and "/resolve/" in p and p.endswith("/" + filename) for m, p in self.requests)

    # -------------------------------------------------------------------- requests

    def _files(self, repo: str) -> list[dict]:
        out = []
        for name, path in sorted(self.repos[repo].items()):
            data = Path(path).read_bytes()
            out.append({"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        return out

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean; requests are in server.requests
                pass

            def _send(self, status: int, body: bytes, headers: dict, head: bool) -> None:
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, head: bool, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

            def _not_found(self, head: bool, code: str = "RepoNotFound") -> None:
                self._send(404, json.dumps({"error": code}).encode(),
                           {"Content-Type": "application/json", "X-Error-Code": code}, head)

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                server.requests.append(("HEAD" if head else "GET", path))
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):]
                    for sep in ("/tree/", "/revision/"):
                        repo, found, _ = rest.partition(sep)
                        if found:
                            break
                    else:
                        repo = rest
                    if repo not in server.repos:
                        return self._not_found(head)
                    if sep == "/tree/" and found:
                        return self._json(server._files(repo), head)
                    return self._json({"id": repo, "sha": server.commits[repo],
                                       "siblings": [{"rfilename": f["path"]} for f in server._files(repo)]}, head)
                repo, found, rest = path.lstrip("/").partition("/resolve/")
                if not found or repo not in server.repos:
                    return self._not_found(head)
                _revision, _, filename = rest.partition("/")
                if filename not in server.repos[repo]:
                    return self._not_found(head, "EntryNotFound")
                data = Path(server.repos[repo][filename]).read_bytes()
                self._send(200, data, {"Content-Type": "application/octet-stream",
                                       "X-Repo-Commit": server.commits[repo],
                                       "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

        return Handler
