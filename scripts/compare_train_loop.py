"""Time per optimizer step of the training loop in two source trees (before / after a change).

Each run is a fresh process calling ``vlm.training.train`` on configs/micro.yaml (the tiny
architecture at 32x32 on shapes scenes, one CPU thread), once with ``--short`` and once with
``--long`` steps; the time per step is the difference over the extra steps, so start-up,
tokenizer training and the final export cancel out. Runs alternate between the trees.

    python scripts/compare_train_loop.py /tmp/before /work/main --repeats 3 [--accum 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = """
import sys, time
from vlm.training import load_train_config, train
cfg = load_train_config(sys.argv[1], sys.argv[2:])
t = time.perf_counter()
train(cfg)
print("SECONDS", time.perf_counter() - t)
"""


def run(tree: str, data: Path, steps: int, accum: int, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", DRIVER, str(Path(tree) / "configs" / "micro.yaml"), f"data.root={data}",
           f"steps={steps}", f"grad_accum_steps={accum}", "data.batch_size=8", f"output_dir={out}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode != 0:
        sys.exit(f"{tree}: run failed:\n{r.stderr[-3000:]}")
    return float([line for line in r.stdout.splitlines() if line.startswith("SECONDS")][-1].split()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=50)
    p.add_argument("--accum", type=int, default=1, help="grad_accum_steps (micro-batches per step)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="looptime-"))
    subprocess.run([sys.executable, "-m", "vlm", "data", "shapes", "--out", str(tmp / "data"), "--n", "96",
                    "--seed", "0"], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": args.after})
    per_step: dict[str, list[float]] = {"before": [], "after": []}
    n = 0
    for _ in range(args.repeats):
        for name in ("before", "after"):
            tree = getattr(args, name)
            times = []
            for steps in (args.short, args.long):
                n += 1
                times.append(run(tree, tmp / "data", steps, args.accum, tmp / f"run{n}"))
            per_step[name].append((times[1] - times[0]) / (args.long - args.short))
    med = {k: statistics.median(v) for k, v in per_step.items()}
    print(json.dumps({"ms_per_step": {k: round(v * 1000, 2) for k, v in med.items()},
                      "runs_ms": {k: [round(x * 1000, 2) for x in v] for k, v in per_step.items()},
                      "after_over_before": round(med["after"] / med["before"], 3),
                      "accum": args.accum, "load": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
