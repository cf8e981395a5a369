"""The CLI picks its OpenMP settings for a shared machine (vlm/runtime/threads.py): passive waiting, and
as many threads as there are cores other processes leave free; what the user set stays."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

from vlm.runtime.threads import choose, configure


def test_thread_count_follows_the_free_cores():
    assert choose(2, 0.0) == 2 and choose(2, 0.3) == 2  # idle
    assert choose(2, 1.0) == 1 and choose(2, 2.2) == 1 and choose(2, 9.0) == 1  # busy: one thread, never 0
    assert choose(16, 4.2) == 12 and choose(16, None) == 16 and choose(4, -0.0) == 4


def test_configure_sets_passive_wait_and_respects_the_user():
    env: dict[str, str] = {}
    assert configure(env, cpus=2, load=2.0) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
                                                 "MKL_NUM_THREADS": "1"}
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    configure(env, cpus=2, load=2.0)
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE", "MKL_NUM_THREADS": "3"}
    env = {"MKL_NUM_THREADS": "2"}
    configure(env, cpus=8, load=0.0)
    assert env["OMP_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_cli_applies_them_before_torch_loads():
    script = ("import sys; from vlm.cli.main import main; main(['--version']); import os, torch; "
              "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    policy, torch_threads, omp = out.stdout.split()[-3:]
    assert policy == "PASSIVE" and torch_threads == omp and 1 <= int(omp) <= len(os.sched_getaffinity(0))
    env["OMP_NUM_THREADS"] = "1"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split()[-3:] == ["ACTIVE", "1", "1"], out.stderr
