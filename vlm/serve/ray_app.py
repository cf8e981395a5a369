"""vlm's server as a Ray Serve deployment: the same Flask handlers, Ray's replicas and batching.

Each replica opens the index, loads its model once and answers every route of the single-process
server (``vlm.serve.app.create_app``: the page, ``/api/search`` by text and by image,
``/image``, ``/thumb``) through the :mod:`vlm.serve.ray_wsgi` bridge, so routes, validation,
limits and JSON answers are the same code. The model work (text and image embeddings) goes
through Ray's ``@serve.batch``: concurrent requests to one replica are embedded as one batch of
at most ``max_batch`` queries, gathered for at most ``max_wait_ms``. On GPUs each replica holds
one GPU (``num_gpus=1``); otherwise one CPU.

Run (docs/serve.md): ``vlm serve-ray INDEX --replicas 2``, or with Ray's own CLI
``serve run vlm.serve.ray_app:build_app index=INDEX replicas=2``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Optional

from vlm.errors import UsageError

APP_NAME = "vlm"


@dataclass
class RayServeOptions:
    index: str  # index directory built by vlm index (the same path on every node)
    model: Optional[str] = None  # model for queries; default: the model that built the index
    replicas: int = 1  # Ray Serve replicas, each with its own copy of the model
    gpus: bool = False  # one GPU per replica (num_gpus=1) instead of one CPU
    max_batch: int = 16  # most queries embedded in one batch (@serve.batch max_batch_size)
    max_wait_ms: float = 10.0  # longest wait to fill a batch (@serve.batch batch_wait_timeout_s)
    max_ongoing: int = 32  # requests a replica works on at once (Ray's max_ongoing_requests)

    def validate(self) -> "RayServeOptions":
        for name, low in (("replicas", 1), ("max_batch", 1), ("max_ongoing", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"{name}={value!r}: must be a whole number of at least {low}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise UsageError(f"max_wait_ms={self.max_wait_ms!r}: must be between 0 and 10000")
        return self


class BatchedEmbedder:
    """Puts a replica's index in front of Ray's batching: ``encode_text``/``encode_image`` called
    by a request thread are answered by one ``@serve.batch`` call on the replica's event loop."""

    def __init__(self):
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the replica's loop, set per request

    def encode(self, batch, items) -> "np.ndarray":  # noqa: F821
        import numpy as np

        futures = [asyncio.run_coroutine_threadsafe(batch(item), self.loop) for item in items]
        return np.stack([f.result() for f in futures])  # (n, dim)


def deployment(options: RayServeOptions):
    """The bound Ray Serve application for ``options`` (deploy it with ``serve.run``)."""
    from ray import serve

    options.validate()
    resources = {"num_cpus": 0, "num_gpus": 1} if options.gpus else {"num_cpus": 1, "num_gpus": 0}
    batch = serve.batch(max_batch_size=options.max_batch, batch_wait_timeout_s=options.max_wait_ms / 1000)

    @serve.deployment(name=APP_NAME, num_replicas=options.replicas, ray_actor_options=resources,
                      max_ongoing_requests=options.max_ongoing)
    class VlmReplica:
        def __init__(self, opts: RayServeOptions):
            from vlm.index.search import open_index
            from vlm.serve.app import MAX_UPLOAD, create_app

            self.index = open_index(opts.index, model=opts.model, device="cuda" if opts.gpus else "cpu")
            self.index.pipeline  # load and check the model before the replica counts as ready
            self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="vlm-model")
            self.request_threads = ThreadPoolExecutor(opts.max_ongoing, thread_name_prefix="vlm-request")
            self.embedder = BatchedEmbedder()
            encode_text, encode_image = self.index.encode_text, self.index.encode_image
            self.encode = {"text": encode_text, "image": encode_image}
            # The handlers call index.encode_*; on this replica's own Index object they go through
            # Ray's batching (an attribute of this one object, nothing global is changed).
            self.index.encode_text = lambda texts: self.embedder.encode(self.embed_texts, texts)
            self.index.encode_image = lambda images: self.embedder.encode(self.embed_images, images)
            self.app, self.max_body = create_app(self.index), MAX_UPLOAD

        async def _run(self, kind: str, items: list):
            import logging

            logging.getLogger("ray.serve").info("vlm: embedded %d %s queries in one batch", len(items), kind)
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(self.model_thread, self.encode[kind], items)
            return list(vectors)

        @batch
        async def embed_texts(self, texts: list):
            return await self._run("text", texts)

        @batch
        async def embed_images(self, images: list):
            return await self._run("image", images)

        async def __call__(self, request):
            from vlm.serve.ray_wsgi import call_wsgi

            self.embedder.loop = asyncio.get_running_loop()
            return await call_wsgi(self.app, request, self.max_body, self.request_threads)

    return VlmReplica.bind(options)


def build_app(args: dict):
    """Ray's application builder: ``serve run vlm.serve.ray_app:build_app index=DIR replicas=2``."""
    known = {f.name: f.type for f in fields(RayServeOptions)}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise UsageError(f"{unknown[0]}: not an option (options: {', '.join(known)})")
    if "index" not in args:
        raise UsageError("index: missing (index=DIR, an index built by vlm index)")
    values = dict(args)
    for name in ("replicas", "max_batch", "max_ongoing"):
        if name in values:
            values[name] = _parse(int, name, values[name])
    if "max_wait_ms" in values:
        values["max_wait_ms"] = _parse(float, "max_wait_ms", values["max_wait_ms"])
    if "gpus" in values:
        values["gpus"] = str(values["gpus"]).lower() in ("1", "true", "yes")
    return deployment(RayServeOptions(**values))


def _parse(kind, name: str, raw):
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={raw!r}: not a number") from None
