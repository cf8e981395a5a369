"""Command-line flags derived from a dataclass's fields, so each option is defined once.

    add_dataclass_flags(parser, GenerationConfig)            # --max-tokens, --beams, ... with their help
    cfg = dataclass_from_flags(GenerationConfig, args)       # back into the dataclass

A field ``max_tokens: int = field(default=30, metadata={"help": ..., "low": 1, "high": 1024})``
becomes ``--max-tokens N`` with default 30 and help text "... (1..1024; default 30)". The
dataclass validates the values (``InvalidOption``), which the CLI prints as ``--max-tokens N: reason``.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Iterable, Optional

_TYPES = {"int": (int, "N"), "float": (float, "X"), "Optional[int]": (int, "N"), "Optional[float]": (float, "X")}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _bounds(meta: dict) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    if high is None:
        return f"> {low}" if meta.get("open_low") else f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"in ({low}, {high}]" if meta.get("open_low") else f"{low}..{high}"


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, only: Optional[Iterable[str]] = None,
                        title: Optional[str] = None) -> None:
    """One flag per field of ``cls`` (or of the fields named in ``only``), in field order."""
    keep = None if only is None else set(only)
    group = parser.add_argument_group(title) if title else parser
    for f in fields(cls):
        if keep is not None and f.name not in keep:
            continue
        default = f.default if f.default is not MISSING else None
        if str(f.type) == "bool":  # --name / --no-name
            group.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=f.metadata.get("help", "").replace("%", "%%")
                               + (f" (default: {'on' if default else 'off'})" if default is not None else ""))
            continue
        typ, metavar = _TYPES[str(f.type)]
        notes = [b for b in [_bounds(f.metadata)] if b]
        if default is not None:
            notes.append(f"default {default}")
        help_ = f.metadata.get("help", "") + (f" ({'; '.join(notes)})" if notes else "")
        group.add_argument(flag_name(f.name), dest=f.name, type=typ, default=default, metavar=metavar,
                           help=help_.replace("%", "%%"))


def dataclass_from_flags(cls, args: argparse.Namespace):
    """``cls`` filled from the parsed flags that ``add_dataclass_flags`` added (others keep defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
