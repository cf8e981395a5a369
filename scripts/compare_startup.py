"""Start-up of `vlm caption ONE.png` from two source trees, side by side, beside `import torch`.

For before/after figures of a change on a noisy machine: the three commands are interleaved
round by round and medians are compared, so both trees see the same load.

    git archive BASE_COMMIT | tar -x -C /tmp/base
    python scripts/compare_startup.py /tmp/base . --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], tree: str) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_startup: {' '.join(cmd)} in {tree} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", help="source tree of the old version")
    p.add_argument("after", help="source tree of the new version")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    before, after = str(Path(args.before).resolve()), str(Path(args.after).resolve())
    image = str(sorted((Path(after) / "examples").glob("*.png"))[0])
    caption = [sys.executable, "-m", "vlm.cli.main", "caption", image, "--device", "cpu"]
    torch_only = [sys.executable, "-c", "import torch"]
    wall(caption, before), wall(caption, after)  # warm the file cache
    times: dict[str, list[float]] = {"import torch": [], "before": [], "after": []}
    for _ in range(args.repeats):
        times["import torch"].append(wall(torch_only, after))
        times["before"].append(wall(caption, before))
        times["after"].append(wall(caption, after))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>12}: median {med[k]:.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"after / before {med['after'] / med['before']:.2f}x; after / import torch "
          f"{med['after'] / med['import torch']:.2f}x; before / import torch {med['before'] / med['import torch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
