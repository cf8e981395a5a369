"""The batching queue of ``vlm serve`` (vlm.serve.batching.Batcher) on its own, with a model stand-in:
what it gathers, how long a short batch waits, and the thread count a server takes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from vlm.serve.batching import Batcher, QueueFull


class Req:
    def __init__(self, n: int, key: str = "k"):
        self.n, self.key, self.images = n, key, [None]

    def batch_key(self):
        return self.key


def recorder(seconds: float = 0.0):
    batches: list[list[int]] = []

    def run_batch(kind, requests):
        batches.append([r.n for r in requests])
        time.sleep(seconds)
        return [{"kind": kind, "n": r.n} for r in requests]

    return batches, run_batch


def test_requests_within_the_wait_form_one_batch_and_each_gets_its_own_answer():
    batches, run_batch = recorder()
    batcher = Batcher(run_batch, max_batch=4, max_wait_ms=2000)
    try:
        futures = [batcher.submit("caption", Req(i)) for i in range(6)]
        answers = [f.result(timeout=30) for f in futures]
    finally:
        batcher.close()
    assert answers == [{"kind": "caption", "n": i} for i in range(6)]
    assert batches == [[0, 1, 2, 3], [4, 5]]  # max_batch images, then the rest after its wait


def test_a_short_batch_waits_at_most_a_share_of_what_its_kind_last_took():
    batches, run_batch = recorder(seconds=0.2)
    batcher = Batcher(run_batch, max_batch=16, max_wait_ms=1000, wait_share=0.05)
    try:
        assert batcher.wait_for("caption") == 1.0  # nothing run yet: the whole max_wait
        batcher.submit("caption", Req(0)).result(timeout=30)
        took = batcher._last_run["caption"]
        assert took >= 0.2 and batcher.wait_for("caption") == pytest.approx(0.05 * took)
        assert batcher.wait_for("embed") == 1.0  # per kind
        slow_batches, slow_run = recorder(seconds=0.5)
        capped = Batcher(slow_run, max_batch=16, max_wait_ms=10, wait_share=0.05)
        try:
            capped.submit("caption", Req(0)).result(timeout=30)
            assert capped.wait_for("caption") == 0.01  # 5% of 0.5 s is 25 ms: max_wait caps it
        finally:
            capped.close()
    finally:
        batcher.close()


def test_a_full_queue_refuses_and_a_cancelled_request_is_not_run():
    gate = threading.Event()
    batches: list[list[int]] = []

    def run_batch(kind, requests):
        batches.append([r.n for r in requests])
        gate.wait(30)
        return [r.n for r in requests]

    batcher = Batcher(run_batch, max_batch=1, max_wait_ms=0, max_queue=2)
    try:
        first = batcher.submit("caption", Req(0))
        deadline = time.time() + 30
        while not batches and time.time() < deadline:  # the first is running, the queue is empty
            time.sleep(0.01)
        waiting = [batcher.submit("caption", Req(1)), batcher.submit("caption", Req(2))]
        with pytest.raises(QueueFull):
            batcher.submit("caption", Req(3))
        assert waiting[0].cancel()
        gate.set()
        assert first.result(timeout=30) == 0 and waiting[1].result(timeout=30) == 2
    finally:
        gate.set()
        batcher.close()
    assert batches == [[0], [2]]


CHILD = """
import os, sys
import vlm.runtime.threads as threads
threads.load_average = lambda: 1000.0  # a machine kept busy by others
from vlm.cli.main import main
code = main(sys.argv[1:])
print(os.environ["OMP_NUM_THREADS"], threads.usable_cpus(), code)
"""


@pytest.mark.parametrize("command,takes_all", [("serve", True), ("caption", False)])
def test_a_server_takes_every_core_whatever_the_load_at_its_start(command, takes_all):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    argv = [command, "--port", "99999"] if command == "serve" else [command, "--max-new-tokens", "0", "x.png"]
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    threads, cpus, code = out.stdout.split()[-3:]
    assert code == "2", out.stderr  # a usage error, after the thread settings and before any model
    assert int(threads) == (int(cpus) if takes_all else 1)
