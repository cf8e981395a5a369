"""Start-up: the whole `vlm caption ONE.png` process beside `python -c "import torch"`, one or more source trees.

The goal (issue: the vlm core) is at most 2.0x ``import torch`` with the default model on a CPU;
issue 13 asks at most 1.5x, idle and beside busy processes. The commands run interleaved round by
round (``benchmarks/harness.py``); wall time and CPU time (user + system, which moves much less
with other jobs' load) are reported for each. OpenMP variables are removed from the commands'
environment, so vlm chooses its own thread settings (vlm/runtime/threads.py) as a user's shell
would leave it to.

    python benchmarks/startup.py --repeats 5                    # this tree
    python benchmarks/startup.py --repeats 5 --busy 0 2 --busy-kind matmul   # idle, then beside 2 busy
    git archive BASE_COMMIT | tar -x -C /tmp/base               # before / after a change:
    python benchmarks/startup.py --trees /tmp/base . --repeats 5

The ratio printed per tree is the median wall time of its ``vlm caption`` over the median of
``import torch``; with two trees, also the last over the first (after / before).
"""

from __future__ import annotations

import sys
from pathlib import Path

import harness


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--trees", nargs="+", default=[str(harness.REPO)],
                   help="source trees whose vlm is started (PYTHONPATH); default: this one")
    p.add_argument("--model", default=None, help="model for vlm caption (default: the shipped default)")
    p.add_argument("--image", default=None, help="image to caption (default: the first bundled example)")
    args = p.parse_args(argv)
    trees = [str(Path(t).resolve()) for t in args.trees]
    image = args.image or str(sorted((harness.REPO / "examples").glob("*.png"))[0])
    caption = [sys.executable, "-m", "vlm.cli.main", "caption", image, "--device", "cpu"]
    if args.model:
        caption += ["--model", args.model]
    cases = {"import torch": harness.command([sys.executable, "-c", "import torch"])}
    names = []
    for i, tree in enumerate(trees):
        names.append(f"vlm caption [{i}]" if len(trees) > 1 else "vlm caption")
        cases[names[-1]] = harness.command(caption, cwd=tree, pythonpath=tree)

    def measure() -> dict:
        res = harness.interleave(cases, args.repeats, warmup=args.warmup)
        for name in names:
            res[f"{name} / import torch"] = round(harness.ratio(res, name, "import torch", "wall_s"), 3)
        if len(names) > 1:
            res["last / first tree"] = {key: round(harness.ratio(res, names[-1], names[0], key), 3)
                                        for key in ("wall_s", "cpu_s")}
        return res

    return harness.run("startup", args, measure, extra={"trees": trees, "image": image, "model": args.model or "default"})


if __name__ == "__main__":
    raise SystemExit(main())
