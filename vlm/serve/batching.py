"""The dynamic batching queue in front of ``vlm.serve.backend.Backend``.

    batcher = Batcher(backend.run_batch, max_batch=16, max_wait_ms=5, max_queue=256)
    future = batcher.submit("caption", request)     # QueueFull when max_queue are waiting
    answer = future.result(timeout=60)              # the request's dict, or its exception raised
    batcher.close()

One worker thread takes the oldest waiting request, then every waiting request with the same
``batch_key()`` up to ``max_batch`` images, waiting for more while the batch is short, and runs
them as one ``run_batch(kind, requests)``. A request whose caller gave up (``future.cancel()``) is
dropped unrun.

How long a short batch waits: ``max_wait_ms``, but never more than ``wait_share`` (5%) of what
the last batch of the same kind took to run. Waiting pays when a batch is slow (a 30-token
caption takes seconds on a CPU: 50 ms of waiting gathers the clients that are still sending, and
costs a lone caption about 3%); it does not when a batch takes milliseconds (an embedding), so a
lone request of a fast kind is not held for the full wait. Until a kind has run once it waits
``max_wait_ms``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable


class QueueFull(Exception):
    """max_queue requests are already waiting: answer 429 with Retry-After."""


class Batcher:
    def __init__(self, run_batch: Callable[[str, list], list], max_batch: int = 16, max_wait_ms: float = 50.0,
                 max_queue: int = 256, wait_share: float = 0.05):
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.max_queue, self.wait_share = max_queue, wait_share
        self._last_run: dict[str, float] = {}  # kind -> seconds its last batch took
        self._waiting: deque = deque()  # (kind, key, request, future)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vlm-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, request) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append((kind, request.batch_key(), request, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        for *_, future in self._waiting:
            future.cancel()

    def _take(self) -> list:
        """The next batch: the oldest request and those waiting with its key (lock held)."""
        kind, key = self._waiting[0][:2]
        batch, size, rest = [], 0, deque()
        while self._waiting:
            item = self._waiting.popleft()
            n = max(1, len(getattr(item[2], "images", ())))
            if item[1] == key and item[0] == kind and (not batch or size + n <= self.max_batch):
                batch.append(item)
                size += n
            else:
                rest.append(item)
        self._waiting.extendleft(reversed(rest))
        return batch

    def wait_for(self, kind: str) -> float:
        """Seconds a short batch of ``kind`` waits for more requests (see the module docstring)."""
        last = self._last_run.get(kind)
        return self.max_wait if last is None else min(self.max_wait, self.wait_share * last)

    def _size(self, key) -> int:
        return sum(max(1, len(getattr(r, "images", ()))) for _, k, r, _ in self._waiting if k == key)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                kind, key = self._waiting[0][:2]
                deadline = time.monotonic() + self.wait_for(kind)
                while self._size(key) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = [item for item in self._take() if item[3].set_running_or_notify_cancel()]
            if not batch:
                continue
            start = time.monotonic()
            try:
                answers = self.run_batch(batch[0][0], [item[2] for item in batch])
            except BaseException as exc:  # every caller gets the error
                for *_, future in batch:
                    future.set_exception(exc)
                continue
            self._last_run[batch[0][0]] = time.monotonic() - start
            for (*_, future), answer in zip(batch, answers):
                future.set_result(answer)
