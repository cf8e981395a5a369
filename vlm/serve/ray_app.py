"""vlm serve as a Ray Serve deployment: the same Flask routes, Ray's replicas and Ray's batching.

Each replica loads the model and indexes (``vlm.serve.backend.Backend.load``) and answers every
route of the single-process server (``vlm.serve.app.create_app``: caption, classify, embed,
search, healthz/readyz, info, the page) through the :mod:`vlm.serve.ray_wsgi` bridge, so routes,
validation, limits and JSON answers are the same code. Only the batcher differs: ``RayBatcher``
has the interface of ``vlm.serve.batching.Batcher`` (``submit(kind, request) -> Future``) and
hands each request to Ray's ``@serve.batch`` (at most ``max_batch`` requests, waiting at most
``max_wait_ms``); the batch is split by ``request.batch_key()`` and each part is one
``backend.run_batch(kind, requests)``, as the single-process queue does. On GPUs each replica
holds one GPU (``num_gpus=1``); otherwise one CPU.

Run (docs/serve_ray.md): ``vlm serve-ray INDEX --replicas 2``, or with Ray's own CLI
``serve run vlm.serve.ray_app:build_app indexes=INDEX replicas=2``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Optional

from vlm.errors import UsageError

APP_NAME = "vlm"


@dataclass
class RayServeOptions:
    indexes: list = field(default_factory=list)  # index directories (the same paths on every node)
    model: Optional[str] = None  # default: the model that built the indexes
    replicas: int = 1  # Ray Serve replicas, each with its own copy of the model
    gpus: bool = False  # one GPU per replica (num_gpus=1) instead of one CPU
    max_batch: int = 16  # requests per @serve.batch call; also images per request (vlm serve's Limits)
    max_wait_ms: float = 5.0  # longest wait to fill a batch (@serve.batch batch_wait_timeout_s)
    max_queue: int = 256  # requests waiting for the model in one replica before 429s
    timeout_s: float = 60.0  # per-request wait for the model (503 after)
    threads: int = 32  # requests one replica works on at once (Ray's max_ongoing_requests)
    api_key: Optional[str] = None  # every request needs it (Authorization: Bearer KEY) when set
    precision: str = "fp32"  # fp32 | bf16 | int8: the model each replica loads (vlm.runtime.precision)

    def validate(self) -> "RayServeOptions":
        for name in ("replicas", "max_batch", "max_queue", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name}={value!r}: must be a whole number of at least 1")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise UsageError(f"max_wait_ms={self.max_wait_ms!r}: must be between 0 and 10000")
        if not self.timeout_s > 0:
            raise UsageError(f"timeout_s={self.timeout_s!r}: must be positive")
        if self.model is None and not self.indexes:
            raise UsageError("give a model or at least one index (the model that built it is served)")
        return self


class RayBatcher:
    """vlm.serve.batching.Batcher's interface over a replica's ``@serve.batch`` method: ``submit``
    is called from a request thread, the batch runs on the replica's event loop."""

    def __init__(self, batched, max_batch: int, max_wait_ms: float, max_queue: int):
        self.batched, self.max_batch, self.max_wait, self.max_queue = batched, max_batch, max_wait_ms / 1000, max_queue
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the replica's loop, set by each request
        self._lock, self._waiting = threading.Lock(), 0

    def submit(self, kind: str, request) -> Future:
        from vlm.serve.batching import QueueFull

        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull()
            self._waiting += 1
        future = asyncio.run_coroutine_threadsafe(self._one(kind, request), self.loop)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._lock:
            self._waiting -= 1

    async def _one(self, kind: str, request):
        ok, value = await self.batched((kind, request))
        if not ok:
            raise value
        return value


def run_grouped(backend, items: list) -> list:
    """``items`` (kind, request) in arrival order -> (ok, answer or error) each: one
    ``backend.run_batch`` per batch key, an error given to the requests of its part only."""
    groups: dict = {}
    for n, (kind, req) in enumerate(items):
        groups.setdefault((kind, req.batch_key()), []).append(n)
    out: list = [None] * len(items)
    for (kind, _), members in groups.items():
        try:
            answers = backend.run_batch(kind, [items[n][1] for n in members])
            for n, answer in zip(members, answers):
                out[n] = (True, answer)
        except Exception as exc:  # every request of this part gets the error, as vlm serve's queue does
            for n in members:
                out[n] = (False, exc)
    return out


def deployment(options: RayServeOptions):
    """The bound Ray Serve application for ``options`` (deploy it with ``serve.run``)."""
    from ray import serve

    options.validate()
    resources = {"num_cpus": 0, "num_gpus": 1} if options.gpus else {"num_cpus": 1, "num_gpus": 0}
    batch = serve.batch(max_batch_size=options.max_batch, batch_wait_timeout_s=options.max_wait_ms / 1000)

    @serve.deployment(name=APP_NAME, num_replicas=options.replicas, ray_actor_options=resources,
                      max_ongoing_requests=options.threads)
    class VlmReplica:
        def __init__(self, opts: RayServeOptions):
            from vlm.serve.app import create_app
            from vlm.serve.backend import Backend
            from vlm.serve.requests import Limits

            self.backend = Backend.load(opts.model, opts.indexes, device="cuda" if opts.gpus else "cpu",
                                        precision=opts.precision)
            limits = Limits(max_images=opts.max_batch, max_queue=opts.max_queue, timeout_s=opts.timeout_s)
            self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="vlm-model")
            self.request_threads = ThreadPoolExecutor(opts.threads, thread_name_prefix="vlm-request")
            self.batcher = RayBatcher(self.run, opts.max_batch, opts.max_wait_ms, opts.max_queue)
            self.app, self.max_body = create_app(self.backend, self.batcher, limits, opts.api_key), limits.max_body

        @batch
        async def run(self, items: list):
            import logging

            logging.getLogger("ray.serve").info("vlm: ran %d requests in one batch", len(items))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.model_thread, run_grouped, self.backend, items)

        async def __call__(self, request):
            from vlm.serve.ray_wsgi import call_wsgi

            self.batcher.loop = asyncio.get_running_loop()
            return await call_wsgi(self.app, request, self.max_body, self.request_threads)

    return VlmReplica.bind(options)


def build_app(args: dict):
    """Ray's application builder: ``serve run vlm.serve.ray_app:build_app indexes=DIR,DIR replicas=2``."""
    kinds = {f.name: f.type for f in fields(RayServeOptions)}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise UsageError(f"{unknown[0]}: not an option (options: {', '.join(kinds)})")
    values = dict(args)
    if isinstance(values.get("indexes"), str):
        values["indexes"] = [p for p in values["indexes"].split(",") if p]
    for name, kind in (("replicas", int), ("max_batch", int), ("max_queue", int), ("threads", int),
                       ("max_wait_ms", float), ("timeout_s", float)):
        if name in values:
            try:
                values[name] = kind(values[name])
            except (TypeError, ValueError):
                raise UsageError(f"{name}={values[name]!r}: not a number") from None
    if "gpus" in values:
        values["gpus"] = str(values["gpus"]).lower() in ("1", "true", "yes")
    return deployment(RayServeOptions(**values))
