"""Start-up benchmark: the whole `vlm caption ONE.png` process vs `python -c "import torch"`.

The goal (issue: the vlm core) is a ratio of at most 2.0 with the default model on a CPU.
The two commands are interleaved and repeated, and medians are compared, because
the machine is noisy.

    python scripts/benchmark_startup.py [--model NAME_OR_DIR] [--image examples/...] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model for vlm caption (default: the shipped default)")
    p.add_argument("--image", default=None, help="image to caption (default: the first bundled example)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    image = args.image or str(sorted((REPO / "examples").glob("*.png"))[0])
    caption = [sys.executable, "-m", "vlm.cli.main", "caption", image, "--device", "cpu"]
    if args.model:
        caption += ["--model", args.model]
    baseline = [sys.executable, "-c", "import torch"]
    wall(baseline), wall(caption)  # warm the file cache
    t_torch, t_vlm = [], []
    for _ in range(args.repeats):
        t_torch.append(wall(baseline))
        t_vlm.append(wall(caption))
    res = {
        "import_torch_s": statistics.median(t_torch),
        "vlm_caption_s": statistics.median(t_vlm),
        "ratio": statistics.median(t_vlm) / statistics.median(t_torch),
        "repeats": args.repeats,
        "machine": f"{cpu_name()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "model": args.model or "default",
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"python -c 'import torch'   median {res['import_torch_s']:.2f} s")
        print(f"vlm caption ONE image      median {res['vlm_caption_s']:.2f} s  (model: {res['model']})")
        print(f"ratio                      {res['ratio']:.2f}x  (goal: <= 2.0)   [{res['machine']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
