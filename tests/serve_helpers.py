"""Starting and stopping a real `vlm serve` process on 127.0.0.1 for the serve tests."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO


def start_server(args: list[str], env_extra: dict | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", "serve", *args, "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    url, deadline, seen = None, time.time() + 120, []
    while url is None and time.time() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if " images at http://" in line:
            url = line.split(" images at ")[1].split()[0]
    if url is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"server did not start: {''.join(seen)}")
    return proc, url, seen


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(index_dir):
    """`vlm serve` over the module's ``index_dir`` fixture, for the whole module; its URL."""
    proc, url, _ = start_server([str(index_dir)])
    yield url
    stop(proc)
