"""Time per optimizer step of the training loop in two source trees (before / after a change).

Each run is a fresh process calling ``vlm.training.train`` on configs/micro.yaml (the tiny
architecture at 32x32 on shapes scenes, one CPU thread), once with ``--short`` and once with
``--long`` steps; the time per step is the difference over the extra steps, so start-up,
tokenizer training and the final export cancel out. Runs alternate between the trees
(``benchmarks/harness.py``).

    python benchmarks/train_loop.py /tmp/before /work/main --repeats 3 [--accum 2]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

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


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--long", type=int, default=50)
    p.add_argument("--accum", type=int, default=1, help="grad_accum_steps (micro-batches per step)")
    p.set_defaults(repeats=3, warmup=0)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="looptime-"))
    subprocess.run([sys.executable, "-m", "vlm", "data", "shapes", "--out", str(tmp / "data"), "--n", "96",
                    "--seed", "0"], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": args.after})
    runs = iter(range(10**9))

    def per_step(tree: str) -> float:
        short, long = (run(tree, tmp / "data", steps, args.accum, tmp / f"run{next(runs)}")
                       for steps in (args.short, args.long))
        return (long - short) / (args.long - args.short)

    def measure() -> dict:
        res = harness.interleave({"before": lambda: per_step(args.before), "after": lambda: per_step(args.after)},
                                 args.repeats, warmup=args.warmup)
        res["after / before"] = round(harness.ratio(res, "after", "before"), 3)
        return res

    return harness.run("train_loop", args, measure, extra={"accum": args.accum, "trees": [args.before, args.after]})


if __name__ == "__main__":
    raise SystemExit(main())
