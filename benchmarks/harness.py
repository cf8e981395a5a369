"""The shared harness of vlm's benchmarks: interleaved runs, median/min/max, busy neighbours, JSON out.

Every benchmark in ``benchmarks/`` is a short file on top of this one. The machine these figures
come from is shared, so a benchmark never times one side and then the other: it names its cases
(vlm, the anchor, a second source tree, ...) and :func:`interleave` runs them round by round
(A, B, A, B, ...) so that load from other jobs hits every case alike; medians are the figures,
min/max and every run are kept beside them. ``--busy 0 2`` repeats the whole measurement beside
0, then 2 CPU-bound processes that the harness starts and stops itself. Each round records the
1-minute load average at its start and end; the result records the machine and the versions.

Writing a benchmark::

    \"\"\"What it measures, against what, and the command that produces the BENCHMARKS.md figures.

        python benchmarks/mything.py --repeats 5 --busy 0 2 --json-out mything.json
    \"\"\"
    import harness                                  # benchmarks/ is sys.path[0] when run as a script

    def main(argv=None) -> int:
        p = harness.parser(__doc__)                 # --repeats --warmup --busy --busy-kind --json-out
        p.add_argument("--n", type=int, default=8)  # the benchmark's own options
        args = p.parse_args(argv)
        model = build(args.n)                       # set-up once, outside the rounds

        def measure() -> dict:                      # called once per --busy value, under that load
            cases = {
                "vlm": lambda: model.run(),         # a case returns None: the harness times the call
                "anchor": lambda: worker.ask()["time"],      # or a float: its own seconds
                "cli": harness.command(["vlm", "--help"]),   # or a dict: several figures (wall_s, cpu_s)
            }
            res = harness.interleave(cases, args.repeats, warmup=args.warmup)
            res["speedup"] = harness.ratio(res, "anchor", "vlm")   # median of anchor / median of vlm
            return res

        return harness.run("mything", args, measure, versions=("torch", "open_clip"))

    if __name__ == "__main__":
        raise SystemExit(main())

:func:`run` prints one JSON line per round as it ends, then one with ``extra`` (set-up figures such as
a parity check), the machine and versions, and
writes the whole result (rounds, machine, versions, command) to ``--json-out``. Stats per case are
``{"median", "min", "max", "all"}`` (seconds); a case returning a dict gets those per key.
Timing assertions belong here, never in unit tests.

Beside the harness, two pieces that more than one benchmark uses: ``openclip_worker.py`` (open_clip's
CoCa in its own interpreter, and the random CoCa both sides run) and ``floor.py`` (the memory floor
of cached greedy decoding).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this tree's vlm, whatever is installed in the venv
    sys.path.insert(1, str(REPO))

Timing = Union[None, float, dict]
BUSY = {  # what a competing process runs: a pure-Python spin, or another PyTorch job's matrix products
    "spin": "while True:\n    pass\n",
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.mm(a, a).tanh_()\n",
}
# OpenMP variables are left to each program to choose (vlm/runtime/threads.py), as a user's shell would.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))}


def parser(doc: str, timed: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares.

    ``timed=False``: a benchmark whose figures are not repeated timings (an accuracy run) gets no
    ``--repeats`` / ``--warmup``; ``--busy`` and ``--json-out`` still apply.
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    if timed:
        p.add_argument("--repeats", type=int, default=5, help="timed rounds per case (interleaved)")
        p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (file cache, lazy set-up)")
    p.add_argument("--busy", type=int, nargs="+", default=[0],
                   help="competing processes beside the measurement; one full measurement per value")
    p.add_argument("--busy-kind", choices=sorted(BUSY), default="spin")
    p.add_argument("--json-out", default=None, help="write the whole result here as JSON")
    return p


def stats(times: list[float]) -> dict:
    r = lambda t: float(f"{t:.5g}")  # noqa: E731  five significant digits: seconds or milliseconds alike
    return {"median": r(statistics.median(times)), "min": r(min(times)), "max": r(max(times)), "all": [r(t) for t in times]}


def interleave(cases: dict[str, Callable[[], Timing]], repeats: int, warmup: int = 1, abba: bool = False) -> dict:
    """Run every case once per round, in order, ``warmup`` untimed rounds then ``repeats`` timed ones.

    A case returns None (the harness times the call), a float (seconds it measured itself, e.g. a
    worker process's own timer) or a dict of named figures (each gets its own stats).
    ``abba``: every second timed round runs the cases in reverse order (A B, B A, A B, ...), so
    that no case always runs right after the same other one.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    runs: dict[str, list] = {name: [] for name in cases}
    for rnd in range(repeats):
        order = list(cases.items())
        for name, fn in (order[::-1] if abba and rnd % 2 else order):
            t0 = time.perf_counter()
            out = fn()
            runs[name].append(time.perf_counter() - t0 if out is None else out)
    res = {}
    for name, values in runs.items():
        if isinstance(values[0], dict):
            res[name] = {key: stats([v[key] for v in values]) for key in values[0]}
        else:
            res[name] = stats(values)
    return res


def ratio(res: dict, num: str, den: str, key: str | None = None) -> float:
    """median(num) / median(den) of an :func:`interleave` result (``key``: a figure of dict cases)."""
    a, b = (res[num][key] if key else res[num]), (res[den][key] if key else res[den])
    return a["median"] / b["median"]


def command(cmd: list[str], *, cwd: str | Path = REPO, pythonpath: str | Path | None = None,
            env: dict | None = None) -> Callable[[], dict]:
    """A case that runs ``cmd`` as a whole process: {"wall_s", "cpu_s"} (CPU = user + system of the child).

    ``pythonpath``: the source tree whose vlm the process imports (before/after comparisons).
    A failing command stops the benchmark with its stderr.
    """
    env = dict(CLEAN_ENV if env is None else env)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)

    def run() -> dict:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"benchmark: {' '.join(map(str, cmd))} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return {"wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)}

    return run


@contextmanager
def busy(n: int, kind: str = "spin") -> Iterator[None]:
    """``n`` competing processes of ``kind`` for the duration of the block; they end with it."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY[kind]], env=CLEAN_ENV) for _ in range(n)]
    try:
        time.sleep(3.0 if n and kind == "matmul" else 1.0 if n else 0.0)  # running (torch imported) first
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(versions: tuple[str, ...] = ("torch",)) -> dict:
    """The machine and the versions a figure belongs to."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    found = {}
    for dist in ("vlm", *versions):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu_name(), "cpus_usable": cpus, "cpus_total": os.cpu_count(), "memory_gib": mem,
            "platform": platform.platform(), "python": platform.python_version(), "versions": found,
            "vlm_commit": commit or None}


def run(name: str, args: argparse.Namespace, measure: Callable[[], dict], *, versions: tuple[str, ...] = ("torch",),
        extra: dict | None = None) -> int:
    """Call ``measure()`` once per ``--busy`` value beside that many busy processes; print and save JSON."""
    rounds = []
    for n in args.busy:
        with busy(n, args.busy_kind):
            load0 = os.getloadavg()
            row = {"busy_processes": n, "busy_kind": args.busy_kind if n else None}
            row.update(measure())
            row["load_1min_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    timing = {key: getattr(args, key) for key in ("repeats", "warmup") if hasattr(args, key)}
    result = {"benchmark": name, **timing, **(extra or {}),
              "rounds": rounds, "machine": machine(versions),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    print(json.dumps({**(extra or {}), "machine": result["machine"], "command": result["command"]}), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0
