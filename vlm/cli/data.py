"""``vlm data SUBCOMMAND``: dataset tools. ``vlm data shapes`` writes the procedural shapes dataset."""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vlm data shapes --out DIR --n N --seed S [--image-size 64]")
        return 0 if argv else 2
    if argv[0] != "shapes":
        print(f"vlm data: error: unknown data command {argv[0]!r} (known: shapes)", file=sys.stderr)
        return 2
    from vlm.data.shapes_cli import main as shapes_main

    return shapes_main(argv[1:])
