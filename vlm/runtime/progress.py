"""Progress bars: a tqdm bar on stderr when stderr is a terminal, else None (nothing in logs).

Every long piece of work in vlm (reading images, writing datasets, training) shows one this way:

    bar = progress_bar("vlm evaluate", total=n, unit="img")
    ...
    if bar is not None:
        bar.update(1)
"""

from __future__ import annotations

import sys
from typing import Optional


def progress_bar(desc: Optional[str] = None, total: Optional[int] = None, unit: str = "it", initial: int = 0):
    """A tqdm bar on stderr when stderr is a terminal (long work shows progress), else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False)
