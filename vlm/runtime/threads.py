"""CPU thread settings chosen for the machine as it is now, before torch is imported.

OpenMP's default active waiting makes every worker thread spin at each barrier until its
partners arrive; when other processes hold the cores, a partner is descheduled and the spinning
thread burns its time slice for nothing. On a 2-core machine with two busy processes beside it,
``vlm caption ONE.png`` took 12.5 s (median) with the defaults and 3.3-3.8 s with
``OMP_WAIT_POLICY=PASSIVE`` or one thread. So the CLI, before importing torch:

- sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning while they wait);
- sets ``OMP_NUM_THREADS`` (and MKL's) to the cores this process may use (its CPU affinity)
  less those other processes keep busy (the 1-minute load average), at least one.

A variable the user has set is never changed, and nothing is set when torch is already imported
(then the settings could no longer apply). ``vlm.runtime.threads.choose`` is the pure rule, tested alone.

    >>> from vlm.runtime.threads import configure
    >>> configure()        # in vlm.cli.main, before any subcommand imports torch
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping, Optional

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask; cgroup-pinned containers included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose(cpus: int, load: Optional[float]) -> int:
    """Threads for a compute-bound process: the cores not kept busy by others, at least one.

    ``load`` is the 1-minute load average (runnable processes, averaged); unknown -> all cores.
    """
    if load is None:
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))


def configure(environ: MutableMapping[str, str] = os.environ, cpus: Optional[int] = None,
              load: Optional[float] = -1.0) -> dict[str, str]:
    """Set the wait policy and thread counts the user has not set; returns what it set."""
    if "torch" in sys.modules and environ is os.environ:
        return {}
    cpus = usable_cpus() if cpus is None else cpus
    load = load_average() if load == -1.0 else load
    chosen: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
    user_threads = next((environ[v] for v in THREAD_VARS if environ.get(v)), None)
    n = user_threads or str(choose(cpus, load))
    for var in THREAD_VARS:
        chosen[var] = n
    applied = {k: v for k, v in chosen.items() if not environ.get(k)}
    environ.update(applied)
    return applied


STEP_ROWS_ONE_THREAD = 16  # decoding steps of at most this many rows run on one thread (see below)


def step_threads(rows: int, current: int, environ: MutableMapping[str, str] = os.environ) -> int:
    """Threads for incremental decoding steps of ``rows`` rows (batch x beams), given ``current``.

    A step multiplies those few rows by every weight matrix: a few hundred short products, each an
    OpenMP region. With passive waiting (set above), every region wakes the sleeping threads, which
    cost more than they saved: greedy 8 x 30 tokens of coca_ViT-B-32 on 2 cores took 1.24-1.36 s
    in int8 with one-thread steps against 1.61-2.00 s with two (bf16 and fp32: the same either way;
    16 rows: int8 2.5-2.9 s against 3.9-4.1 s), while at 32 rows two threads were faster (int8 3.9-4.3
    s against 4.8-4.9 s). BENCHMARKS.md, "Reduced precision". With spinning waits (the user's
    ``OMP_WAIT_POLICY`` other than passive) the threads stay: they cost no wake-up."""
    if rows <= STEP_ROWS_ONE_THREAD and environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return 1
    return current
