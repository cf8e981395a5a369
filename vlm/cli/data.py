"""``vlm data SUBCOMMAND``: dataset tools. ``vlm data shapes`` writes the procedural shapes dataset."""

from __future__ import annotations

from typing import Optional

from vlm.cli.common import Parser

SUBCOMMANDS = {"shapes": "write the procedural shapes dataset (COCO captions format)"}


def build_parser() -> Parser:
    p = Parser(prog="vlm data", description="Dataset tools.")
    sub = p.add_subparsers(dest="what", metavar="{shapes}", parser_class=Parser)
    sub.required = True
    for name, help_ in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(argv or [])
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # --help, a missing or unknown subcommand: argparse's one line
        return 2
    from vlm.data.shapes_cli import main as shapes_main

    return shapes_main(argv[1:])
