"""``vlm serve INDEX [--host 127.0.0.1] [--port 8000]``: the search page and JSON API (see vlm.index.server).

Binds to 127.0.0.1 unless --host says otherwise; serves only the images in the index.
"""

from __future__ import annotations

import sys
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm serve", description="A web page and JSON API to search an index.")
    p.add_argument("index", metavar="INDEX", help="index directory built by vlm index")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--threads", type=int, default=8, help="request threads (default 8)")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR", help="model for queries (same weights)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    from vlm.index.search import open_index
    from vlm.index.server import create_app

    index = open_index(args.index, model=args.model, device=args.device)
    index.pipeline  # load and check the model before accepting requests
    from waitress.server import create_server

    server = create_server(create_app(index), host=args.host, port=args.port, threads=args.threads, ident="vlm")
    host, port = server.socket.getsockname()[:2]
    print(f"vlm serve: {len(index)} images at http://{host}:{port}/  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
