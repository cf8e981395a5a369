"""``vlm serve-ray [INDEX ...] --replicas N [vlm serve's options]``: vlm serve as a Ray Serve deployment (vlm.serve.ray_app).

Starts a local Ray instance (or joins a running cluster with ``--address auto`` / ``RAY_ADDRESS``),
deploys the replicas, prints the URL and serves until Ctrl-C or SIGTERM; then the application is
deleted and a Ray instance this command started is shut down with every process it started.
Needs the ``ray`` extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Optional

from vlm.cli.common import Parser
from vlm.errors import UsageError


def build_parser() -> Parser:
    """vlm serve's options (the same names and defaults), plus the Ray ones."""
    from vlm.cli.serve import build_parser as serve_parser

    p = serve_parser()
    p.prog = "vlm serve-ray"
    for action in p._actions:  # Ray's @serve.batch waits a flat time: no 5% cap as in vlm serve's queue
        if action.dest == "max_wait_ms":
            action.help = "how long a short batch waits for more requests (Ray's @serve.batch; default 50)"
    p.description = "vlm serve's model server as a Ray Serve deployment (replicas, Ray's batching)."
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas (default: one per GPU of the cluster, else 1); --threads is per replica")
    p.add_argument("--address", default="local",
                   help="Ray cluster: local (start one here, default), auto (the one `ray start` runs here), "
                        "or HOST:PORT of a head node")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    if args.replicas is not None and args.replicas < 1:
        raise UsageError(f"--replicas {args.replicas}: must be at least 1")
    if args.device not in (None, "cpu", "cuda"):
        raise UsageError(f"--device {args.device}: cpu or cuda (cuda: one GPU per replica)")
    from vlm.cli.serve import api_key_from

    api_key = api_key_from(args)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UsageError('Ray Serve is not installed: pip install -e ".[ray]" (or pip install "ray[serve]")') from None
    from vlm.index.search import open_index
    from vlm.serve.ray_app import APP_NAME, RayServeOptions, deployment

    options = RayServeOptions(indexes=[os.path.abspath(p) for p in args.index], model=args.model,
                              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                              timeout_s=args.timeout, threads=args.threads, api_key=api_key,
                              precision=args.precision).validate()
    size = sum(len(open_index(p, model=args.model)) for p in args.index)  # a broken index: one line, before Ray
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"vlm serve-ray: warning: listening on {args.host} without an API key: anyone who can reach it "
              f"can use it (set --api-key-env VAR)", file=sys.stderr, flush=True)
    port = args.port or _free_port(args.host)
    local = args.address == "local"
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
             **({"num_cpus": args.replicas or 1} if local and args.device != "cuda" else {}))
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own handler
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        options.gpus = args.device == "cuda" or (args.device is None and gpus > 0)
        options.replicas = args.replicas or (gpus if options.gpus else 1)
        have = gpus if options.gpus else int(ray.cluster_resources().get("CPU", 0))
        if options.replicas > have:
            kind = "GPU" if options.gpus else "CPU"
            raise UsageError(f"--replicas {options.replicas}: the Ray cluster has {have} {kind}s "
                             f"(each replica holds one {kind})")
        serve.start(http_options={"host": args.host, "port": port})
        try:
            serve.run(deployment(options), name=APP_NAME, route_prefix="/")
        except Exception as e:  # a replica failed to start (the model, the index): Ray's error, one line
            raise UsageError(f"the replicas did not start: {_last_error_line(e)}") from None
        kind = "GPU" if options.gpus else "CPU"
        print(f"vlm serve-ray: {size} images at http://{args.host}:{port}/  ({options.replicas} {kind} replicas "
              f"on Ray Serve; Ctrl-C stops)", file=sys.stderr, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(local)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(local: bool) -> None:
    """Delete the application; a Ray instance this command started goes with all its processes."""
    import ray
    from ray import serve

    from vlm.serve.ray_app import APP_NAME

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _last_error_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    return (errors or lines or [type(error).__name__])[-1]
