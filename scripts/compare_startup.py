"""Start-up of `vlm caption ONE.png` from two source trees, side by side, beside `import torch`.

For before/after figures of a change on a noisy machine: the three commands are interleaved
round by round and medians are compared, so both trees see the same load. The CPU time
(user + system) of each process is reported beside the wall time: it moves much less with
the load of other processes than the wall time does.

    git archive BASE_COMMIT | tar -x -C /tmp/base
    python scripts/compare_startup.py /tmp/base . --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], tree: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd`` with ``tree`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": tree}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"compare_startup: {' '.join(cmd)} in {tree} failed: {proc.stderr.strip()[-500:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


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
    times: dict[str, list[tuple[float, float]]] = {"import torch": [], "before": [], "after": []}
    for _ in range(args.repeats):
        times["import torch"].append(wall(torch_only, after))
        times["before"].append(wall(caption, before))
        times["after"].append(wall(caption, after))
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>12}: wall median {med[k]:.2f} s ({', '.join(f'{w:.2f}' for w, _ in v)}); "
              f"CPU median {cpu[k]:.2f} s")
    print(f"after / before: wall {med['after'] / med['before']:.2f}x, CPU {cpu['after'] / cpu['before']:.2f}x; "
          f"wall after / import torch {med['after'] / med['import torch']:.2f}x, "
          f"before / import torch {med['before'] / med['import torch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
