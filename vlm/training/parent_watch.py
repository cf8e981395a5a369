"""Stop a training process whose launcher has died.

``accelerate launch`` (and torchrun inside it) starts ``train.py`` as a child process. When the
launcher is killed outright (``kill -9``, the OOM killer, a lost SSH session) it cannot pass
the signal on, and the child would go on training as an orphan, holding the GPUs and writing
into the run directory. ``watch_parent()`` starts a daemon thread that checks once a second
whether the process's parent is still the one that started it; when it is not (the orphan was
re-parented to init or a subreaper), the process sends itself SIGTERM, which ends it as
``kill`` would (or runs a SIGTERM handler, if the program installed one). The last
checkpoint stays, and ``resume=latest`` continues from it.

Only a process started by a launcher is watched: the parent is ``vlm train`` (which names
itself in ``VLM_LAUNCHER_PID``), ``accelerate launch`` or torchrun. ``python scripts/train.py``
run from a shell is left alone, so ``nohup python scripts/train.py ... &`` keeps running when
the shell exits.

    >>> from vlm.training.parent_watch import watch_parent
    >>> watch_parent()     # first thing in train.py's main, before the slow imports

Polling rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the parent
*thread* that forked the child exits, which a launcher running its agent in a thread could
trigger while alive; ``os.getppid()`` is exact, portable, and costs one system call a second.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

LAUNCHER_PID_VAR = "VLM_LAUNCHER_PID"  # set by `vlm train` for its children
LAUNCHER_WORDS = ("accelerate", "torchrun", "torch.distributed.run", "torch.distributed.launch")
INTERVAL_S = 1.0
_watched: Optional[int] = None  # the parent watch_parent() watches


def parent_gone() -> bool:
    """Whether the watched launcher has exited (False when nothing is watched)."""
    return _watched is not None and os.getppid() != _watched


def stop_message() -> str:
    return (f"train.py: the launcher (pid {_watched}) has exited; stopping this process "
            f"(resume with resume=latest)")


def parent_cmdline(pid: int) -> list[str]:
    """The command line of process ``pid`` ([] when it cannot be read)."""
    try:
        import psutil  # accelerate depends on it

        return psutil.Process(pid).cmdline()
    except Exception:  # psutil missing, the process gone, or no permission
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            return []


def started_by_launcher(ppid: int, environ=os.environ) -> bool:
    """Whether the parent ``ppid`` is a training launcher (see the module docstring)."""
    if environ.get(LAUNCHER_PID_VAR) == str(ppid):
        return True
    words = " ".join(parent_cmdline(ppid))
    return any(w in words for w in LAUNCHER_WORDS)


def watch_parent(interval: float = INTERVAL_S, force: bool = False) -> Optional[threading.Thread]:
    """Start the watch thread when the parent is a launcher (or ``force``); returns it, or None."""
    global _watched
    ppid = os.getppid()
    if ppid <= 1 or not (force or started_by_launcher(ppid)):
        return None
    _watched = ppid
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            if os.getppid() != ppid:
                try:
                    print(stop_message(), file=sys.stderr, flush=True)
                except (OSError, ValueError):  # stderr went with the launcher
                    pass
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=run, name="vlm-parent-watch", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]  (for tests and callers that want to end it)
    thread.start()
    return thread
