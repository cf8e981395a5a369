"""``vlm serve [INDEX ...] [--model M] [--host 127.0.0.1] [--port 8000] [--max-batch N] [--max-wait-ms T]
[--api-key-env VAR]``: one model and its indexes over HTTP (see vlm.serve and docs/serve.md).

Binds to 127.0.0.1 unless --host says otherwise; serves only the images in the indexes.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from vlm.cli.common import Parser, add_precision_arg
from vlm.errors import UsageError


def build_parser() -> Parser:
    p = Parser(prog="vlm serve", description="A model server: caption, classify, embed and search over HTTP.")
    p.add_argument("index", metavar="INDEX", nargs="*", help="index directories built by vlm index")
    p.add_argument("--model", default=None, metavar="NAME_OR_DIR",
                   help="the model (default: the one that built the indexes; they must share its weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--threads", type=int, default=32, help="request threads (default 32)")
    p.add_argument("--max-batch", type=int, default=16, help="images per model batch (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=50.0,
                   help="longest wait for more requests to fill a batch (default 50; never more than 5%% of "
                        "what the last batch of the same kind took)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for the model before 429s")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for the model")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key in environment variable VAR (Authorization: Bearer KEY)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    add_precision_arg(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    for flag, value, low in (("--threads", args.threads, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-queue", args.max_queue, 1)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if not 0 <= args.max_wait_ms <= 10000:
        raise UsageError(f"--max-wait-ms {args.max_wait_ms:g}: must be 0..10000")
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be positive")
    api_key = api_key_from(args)
    if args.model is None and not args.index:
        raise UsageError("give --model or at least one INDEX (the model that built it is served)")
    from vlm.serve.app import create_app
    from vlm.serve.backend import Backend
    from vlm.serve.batching import Batcher
    from vlm.serve.requests import Limits

    backend = Backend.load(args.model, args.index, device=args.device, precision=args.precision)
    limits = Limits(max_images=args.max_batch, max_queue=args.max_queue, timeout_s=args.timeout)
    batcher = Batcher(backend.run_batch, args.max_batch, args.max_wait_ms, args.max_queue)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"vlm serve: warning: listening on {args.host} without an API key: anyone who can reach it can "
              f"use it (set --api-key-env VAR)", file=sys.stderr, flush=True)
    from waitress.server import create_server

    server = create_server(create_app(backend, batcher, limits, api_key), host=args.host, port=args.port,
                           threads=args.threads, ident="vlm")
    host, port = server.socket.getsockname()[:2]
    count = sum(len(ix) for ix in backend.indexes.values())
    print(f"vlm serve: {count} images at http://{host}:{port}/  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        batcher.close()
    return 0


def api_key_from(args) -> Optional[str]:
    """The key every request must carry (the variable ``--api-key-env`` names), or None without the flag."""
    if args.api_key_env is None:
        return None
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise UsageError(f"--api-key-env {args.api_key_env}: the environment variable is unset or empty")
    return api_key
