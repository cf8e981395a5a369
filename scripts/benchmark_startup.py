"""Start-up benchmark: the whole `vlm caption ONE.png` process vs `python -c "import torch"`.

The goal (issue: the vlm core) is a ratio of at most 2.0 with the default model on a CPU.
The two commands are interleaved and repeated, and medians are compared, because
the machine is noisy.

    python scripts/benchmark_startup.py [--model NAME_OR_DIR] [--image examples/...] [--repeats 7]
    python scripts/benchmark_startup.py --busy 0 2 --repeats 5   # idle, then beside 2 busy processes

``--busy N`` starts N ``python -c "while 1: pass"`` processes for the measurement (the CPU-bound
neighbours of a shared machine) and stops them after; several values run one after the other.
OpenMP variables are removed from the commands' environment, so vlm chooses its own thread
settings (vlm/runtime/threads.py) as a user's shell would leave it to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=CLEAN_ENV)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark: command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return dt


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]


def measure(caption: list[str], baseline: list[str], repeats: int, busy: int) -> dict:
    procs = busy_processes(busy)
    try:
        time.sleep(1.0 if busy else 0.0)
        load0 = os.getloadavg()[0]
        wall(baseline), wall(caption)  # warm the file cache
        t_torch, t_vlm = [], []
        for _ in range(repeats):  # interleaved: machine noise hits both alike
            t_torch.append(wall(baseline))
            t_vlm.append(wall(caption))
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
    return {
        "busy_processes": busy,
        "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "import_torch_s": statistics.median(t_torch),
        "vlm_caption_s": statistics.median(t_vlm),
        "ratio": statistics.median(t_vlm) / statistics.median(t_torch),
        "pair_ratios": [round(v / t, 2) for v, t in zip(t_vlm, t_torch)],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model for vlm caption (default: the shipped default)")
    p.add_argument("--image", default=None, help="image to caption (default: the first bundled example)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--busy", type=int, nargs="+", default=[0], help="busy processes beside the run (one value per run)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    image = args.image or str(sorted((REPO / "examples").glob("*.png"))[0])
    caption = [sys.executable, "-m", "vlm.cli.main", "caption", image, "--device", "cpu"]
    if args.model:
        caption += ["--model", args.model]
    baseline = [sys.executable, "-c", "import torch"]
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    for busy in args.busy:
        res = {**measure(caption, baseline, args.repeats, busy), "repeats": args.repeats, "machine": machine,
               "model": args.model or "default"}
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"[{busy} busy processes, load {res['load_1min']}]  import torch {res['import_torch_s']:.2f} s  "
                  f"vlm caption {res['vlm_caption_s']:.2f} s  ratio {res['ratio']:.2f}x "
                  f"(pairs {res['pair_ratios']}; goal <= 1.5)  [{machine}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
