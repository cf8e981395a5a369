"""Dynamic batching in ``vlm serve``: 16 concurrent clients each captioning one image at a time,
against the same requests sent one after another; and a lone request's latency against the same
caption done in process (``Pipeline.caption``).

The model is open_clip's ``coca_ViT-B-32`` with random non-degenerate weights
(``tests/parity_weights.py: randomize_``), converted with ``vlm convert open_clip``. The server is
``vlm serve --model DIR`` in a subprocess on 127.0.0.1. ``--busy 1`` runs one busy-looping process
beside it (the machine is shared: os.getloadavg() is recorded with each figure).

    python benchmarks/serve.py [--clients 16] [--per-client 2] [--busy 0|1] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def build_model(out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    from parity_weights import randomize_

    model = randomize_(open_clip.create_model("coca_ViT-B-32"), seed=0, logit_gain=4.0).eval()
    state = out.parent / "coca.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(state))
    subprocess.run([sys.executable, "-m", "vlm.cli.main", "convert", "open_clip", str(state), "--arch",
                    "coca_ViT-B-32", "--out", str(out)], check=True, cwd=REPO)


def start(model: Path, max_batch: int, max_wait_ms: float):
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", "serve", "--model", str(model), "--port", "0",
                             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if " images at http://" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split(" images at ")[1].split()[0]
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def run(url: str, images: list[str], clients: int) -> tuple[float, list[float], list[str]]:
    """Wall time, per-request latencies and captions of all requests over ``clients`` threads."""
    lat, caps = [0.0] * len(images), [""] * len(images)

    def worker(ids):
        for i in ids:
            t = time.perf_counter()
            caps[i] = post(url + "api/caption", {"images": [images[i]]})["results"][0]["caption"]
            lat[i] = time.perf_counter() - t

    threads = [threading.Thread(target=worker, args=(list(range(c, len(images), clients)),)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, caps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--busy", type=int, default=0)
    p.add_argument("--lone-repeats", type=int, default=5)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms (its default: 5)")
    args = p.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.busy)]
    proc = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "coca"
            build_model(model_dir)
            from PIL import Image

            import vlm

            rng = np.random.default_rng(0)
            n = args.clients * args.per_client
            paths = []
            for i in range(n):
                path = Path(tmp) / f"img{i}.png"
                Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)
                paths.append(path)
            b64 = [base64.b64encode(p.read_bytes()).decode() for p in paths]
            proc, url = start(model_dir, args.clients, args.max_wait_ms)
            post(url + "api/caption", {"images": [b64[0]]})  # warm-up
            load0 = os.getloadavg()[0]
            seq_wall, seq_lat, seq_caps = run(url, b64, 1)
            con_wall, con_lat, con_caps = run(url, b64, args.clients)
            load1 = os.getloadavg()[0]
            pipe = vlm.load(str(model_dir))
            pipe.caption([str(paths[0])])  # warm-up
            lone, inproc = [], []
            for _ in range(args.lone_repeats):  # interleaved
                t = time.perf_counter()
                post(url + "api/caption", {"images": [b64[0]]})
                lone.append(time.perf_counter() - t)
                t = time.perf_counter()
                pipe.caption([str(paths[0])])
                inproc.append(time.perf_counter() - t)
            same = con_caps == seq_caps
            result = {
                "requests": n, "clients": args.clients, "busy": args.busy, "max_wait_ms": args.max_wait_ms, "loadavg": [round(load0, 2), round(load1, 2)],
                "one_at_a_time": {"req_per_s": round(n / seq_wall, 3), "p50_ms": round(np.percentile(seq_lat, 50) * 1e3),
                                  "p99_ms": round(np.percentile(seq_lat, 99) * 1e3)},
                "concurrent": {"req_per_s": round(n / con_wall, 3), "p50_ms": round(np.percentile(con_lat, 50) * 1e3),
                               "p99_ms": round(np.percentile(con_lat, 99) * 1e3)},
                "throughput_ratio": round(seq_wall / con_wall, 2),
                "lone_ms": round(float(np.median(lone)) * 1e3), "in_process_ms": round(float(np.median(inproc)) * 1e3),
                "lone_ratio": round(float(np.median(lone) / np.median(inproc)), 3),
                "captions_identical": same,
            }
            print(json.dumps(result, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        for b in busy:
            b.kill()
            b.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
