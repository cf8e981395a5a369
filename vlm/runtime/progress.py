"""Progress bars: a tqdm bar on stderr when stderr shows on a terminal, else None (nothing in logs).

Every long piece of work in vlm (reading images, writing datasets, training) shows one this way:

    bar = progress_bar("vlm evaluate", total=n, unit="img")
    ...
    if bar is not None:
        bar.update(1)

stderr "shows on a terminal" when it is one, or when it is the pipe of Accelerate's one-process
launcher (``accelerate launch``, 1.16) whose own stderr is a terminal: that launcher reads the
child's stderr through a pipe and writes each chunk through as it arrives, so a bar drawn into
the pipe shows live on the user's terminal (``vlm train`` gives the child the terminal itself).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Optional


def progress_bar(desc: Optional[str] = None, total: Optional[int] = None, unit: str = "it", initial: int = 0):
    """A tqdm bar on stderr when stderr shows on a terminal (long work shows progress), else None."""
    if not stderr_on_terminal():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False)


def stderr_on_terminal() -> bool:
    """stderr is a terminal, or a pipe an Accelerate launcher relays to its terminal stderr."""
    try:
        if sys.stderr.isatty():
            return True
        piped = stat.S_ISFIFO(os.fstat(sys.stderr.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # no stderr, or one without a file descriptor
        return False
    return piped and _accelerate_relays_to_terminal(os.getppid())


def _accelerate_relays_to_terminal(pid: int) -> bool:
    """Process ``pid`` is ``accelerate launch`` and its stderr is a terminal (Linux /proc; else False)."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/2")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    terminal = target.startswith(("/dev/pts/", "/dev/tty")) and target != "/dev/tty"  # not the controlling alias
    launcher = any(part.endswith((b"accelerate", b"accelerate.commands.launch")) for part in argv[:3]) \
        and b"launch" in b" ".join(argv[:3])
    return terminal and launcher
