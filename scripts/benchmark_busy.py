"""Speed on a busy machine (issue 13 item 22): vlm's CLI and greedy captioning, idle and beside busy processes.

For each load (``--busy 0 2``: no competing process, then two), under the same load:

- start-up: the whole ``vlm caption ONE.png`` process against ``python -c "import torch"``,
  interleaved, medians (``scripts/benchmark_startup.py``'s measurement; OpenMP variables are
  removed from the environment, so vlm chooses its own thread settings, ``vlm/runtime/threads.py``);
- greedy captioning of 8 images x 30 tokens with coca_ViT-B-32 against open_clip's
  ``CoCa.generate`` on the same weights (``scripts/benchmark_generate.py --skip beam train``,
  ``--threads auto``: the thread count the vlm CLI would choose, for both sides).

The competing processes are this script's own: ``--busy-kind matmul`` (default) runs
``torch.mm`` of 512 x 512 matrices in a loop in one thread each, the way another
PyTorch job shares the cores; ``spin`` runs ``while 1: pass``.

    python scripts/benchmark_busy.py --openclip-python /work/venv-oc/bin/python --busy 0 2 --json-out busy.json

Targets: ``vlm caption ONE.png`` at most 1.5x ``import torch``; greedy at least 8x faster
than open_clip; both idle and busy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = {
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.mm(a, a).tanh_()\n",
    "spin": "while True:\n    pass\n",
}


def _startup_module():
    spec = importlib.util.spec_from_file_location("benchmark_startup", REPO / "scripts" / "benchmark_startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_busy(n: int, kind: str) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    procs = [subprocess.Popen([sys.executable, "-c", BUSY[kind]], env=env) for _ in range(n)]
    time.sleep(3.0 if n else 0.0)  # torch imported, the loops running
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def greedy(openclip_python: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen.json"
        cmd = [sys.executable, str(REPO / "scripts" / "benchmark_generate.py"), "--openclip-python", openclip_python,
               "--skip", "beam", "train", "--reps", str(reps), "--threads", "auto", "--busy", "0",
               "--json-out", str(out)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"benchmark_busy: benchmark_generate failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--openclip-python", default="/work/venv-oc/bin/python",
                   help="an interpreter with open_clip_torch 3.3 and transformers<4.56")
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="competing processes, one value per round")
    p.add_argument("--busy-kind", choices=sorted(BUSY), default="matmul")
    p.add_argument("--repeats", type=int, default=5, help="start-up pairs per round")
    p.add_argument("--gen-reps", type=int, default=3, help="greedy repetitions per side per round")
    p.add_argument("--skip", nargs="*", default=[], choices=["startup", "greedy"])
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    startup = _startup_module()
    image = str(sorted((REPO / "examples").glob("*.png"))[0])
    caption = [sys.executable, "-m", "vlm.cli.main", "caption", image, "--device", "cpu"]
    baseline = [sys.executable, "-c", "import torch"]
    rounds = []
    for n in args.busy:
        procs = start_busy(n, args.busy_kind)
        try:
            row: dict = {"busy_processes": n, "busy_kind": args.busy_kind, "load_1min_start": os.getloadavg()[0]}
            if "startup" not in args.skip:
                s = startup.measure(caption, baseline, args.repeats, busy=0)  # the load is ours, running
                row["startup"] = {k: s[k] for k in ("import_torch_s", "vlm_caption_s", "ratio", "pair_ratios")}
            if "greedy" not in args.skip:
                g = greedy(args.openclip_python, args.gen_reps)
                row["greedy"] = {"threads": g["threads"], **g["greedy"]}
            row["load_1min_end"] = os.getloadavg()[0]
        finally:
            stop(procs)
        rounds.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": startup.cpu_name(), "cpus": os.cpu_count(), "image": image, "rounds": rounds,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
