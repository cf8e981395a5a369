"""Dynamic batching in ``vlm serve``: 16 concurrent clients each captioning one image at a time,
against the same requests sent one after another; and a lone request's latency against the same
caption done in process (``Pipeline.caption``).

The model is open_clip's ``coca_ViT-B-32`` with random non-degenerate weights
(``tests/parity_weights.py: randomize_``), converted with ``vlm convert open_clip``. The server is
``vlm serve --model DIR`` (its defaults unless ``--max-wait-ms`` is given) in a subprocess on
127.0.0.1. Each round sends every request one at a time, then all of them from the concurrent
clients (``throughput_ratio`` = one-at-a-time wall / concurrent wall); then the lone request and
the in-process caption alternate ``--lone-repeats`` times.

    python benchmarks/serve.py --repeats 1 --busy 0 1 --json-out serve.json
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

import harness

sys.path.insert(0, str(harness.REPO / "tests"))


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
                    "coca_ViT-B-32", "--out", str(out)], check=True, cwd=harness.REPO, env=harness.CLEAN_ENV)


def start(model: Path, max_batch: int, max_wait_ms: float | None):
    wait = [] if max_wait_ms is None else ["--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli.main", "serve", "--model", str(model), "--port", "0",
                             "--max-batch", str(max_batch), *wait],
                            cwd=harness.REPO, stderr=subprocess.PIPE, text=True, env=harness.CLEAN_ENV)
    for line in proc.stderr:
        if " images at http://" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split(" images at ")[1].split()[0]
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def clients(url: str, images: list[str], n_clients: int, captions: list[str]) -> dict:
    """All requests over ``n_clients`` threads, each sending its next when its last is answered."""
    lat = [0.0] * len(images)

    def worker(ids):
        for i in ids:
            t = time.perf_counter()
            captions[i] = post(url + "api/caption", {"images": [images[i]]})["results"][0]["caption"]
            lat[i] = time.perf_counter() - t

    threads = [threading.Thread(target=worker, args=(list(range(c, len(images), n_clients)),))
               for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "req_per_s": len(images) / wall, "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99))}


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.set_defaults(repeats=1, warmup=0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=4, help="requests each concurrent client sends in turn")
    p.add_argument("--lone-repeats", type=int, default=5)
    p.add_argument("--max-wait-ms", type=float, default=None, help="the server's --max-wait-ms (default: its own)")
    args = p.parse_args(argv)
    from vlm.runtime.threads import configure

    configure(load=None)  # the in-process side gets what `vlm serve` takes: every core, passive OpenMP waits
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "coca"
        build_model(model_dir)
        from PIL import Image

        import vlm

        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.clients * args.per_client):
            path = Path(tmp) / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        b64 = [base64.b64encode(p.read_bytes()).decode() for p in paths]
        proc, url = start(model_dir, args.clients, args.max_wait_ms)
        try:
            info = json.loads(urllib.request.urlopen(url + "api/info", timeout=60).read())
            pipe = vlm.load(str(model_dir))
            pipe.caption([str(paths[0])])  # warm-up
            post(url + "api/caption", {"images": [b64[0]]})
            seq_caps, con_caps = [""] * len(b64), [""] * len(b64)

            def measure() -> dict:
                res = harness.interleave({"one_at_a_time": lambda: clients(url, b64, 1, seq_caps),
                                          "concurrent": lambda: clients(url, b64, args.clients, con_caps)},
                                         args.repeats, warmup=args.warmup)
                res["throughput_ratio"] = round(harness.ratio(res, "one_at_a_time", "concurrent", "wall_s"), 3)
                lone = harness.interleave({"lone": lambda: post(url + "api/caption", {"images": [b64[0]]}) and None,
                                           "in_process": lambda: pipe.caption([str(paths[0])]) and None},
                                          args.lone_repeats, warmup=0)
                res.update(lone)
                res["lone_ratio"] = round(harness.ratio(lone, "lone", "in_process"), 3)
                res["captions_identical"] = con_caps == seq_caps
                return res

            return harness.run("serve", args, measure, versions=("torch", "open_clip_torch", "waitress"), extra={
                "requests": len(b64), "clients": args.clients, "server_threads": info["torch_threads"],
                "in_process_threads": __import__("torch").get_num_threads(), "batching": info["batching"]})
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
