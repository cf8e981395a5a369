"""Leaving a process of an ``accelerate launch`` group (``vlm train``, a launched ``vlm index``).

A gloo process group left to interpreter shutdown can be destroyed only then, and gloo's worker
threads then abort the process: "terminate called without an active exception", exit status 134
(or -6 under the launcher) after a finished run. Seen once in a full test-suite run of
``vlm train`` with two CPU processes on a 2-core machine, and once of ``vlm index`` (docs/search.md's
two-process block), each after the command had done its work. So a process that reaches an end
itself destroys the group and collects garbage while the interpreter is whole; an interrupted one
(130), maybe inside a collective that destroying the group would wait on, leaves without shutdown.
"""

from __future__ import annotations

import gc
import os
import sys


def distributed() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def tear_down() -> None:
    """Destroy the process group and collect the run's objects; nothing outside one (a full
    collection took 0.13 s after loading the default model: every ``vlm`` command would pay it)."""
    if distributed():
        sys.modules["torch.distributed"].destroy_process_group()
        gc.collect()


def leave(code: int) -> int:
    """``code``, after the process group is gone; an interrupted launched process exits here."""
    if code in (0, 1, 2):  # an end this process reached itself: none of its collectives is pending
        tear_down()
    elif code == 130 and distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
