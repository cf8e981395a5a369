"""What every export shares: the refusal error, the formats table and atomic output directories.

An export either writes its whole directory or nothing: files go to a temporary
sibling directory, which is renamed onto ``--out`` only after every file is written
and checked (a crash or a refusal leaves no half-written output behind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vlm.errors import ModelError

FORMATS = ("onnx", "hf", "open_clip")


class ExportRefused(ModelError):
    """The model cannot be expressed in the target format; the message says why, in one line."""


def check_out_dir(out: Path, force: bool = False) -> None:
    """An output directory must be new or empty (or replaced with ``force``); the refusal names
    ``force=True`` in Python and ``--out DIR`` / ``--force`` on the command line (``cli_message()``)."""
    from vlm.errors import UsageError

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        why = "exists and is not an empty directory"
        raise UsageError(f"{out}: {why} (force=True replaces it)",
                         cli=f"--out {out}: {why} (pass --force to replace it)")


@contextlib.contextmanager
def atomic_dir(out, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` by a rename."""
    out = Path(out)
    check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def tokenizer_kind(tokenizer) -> str:
    return getattr(tokenizer, "type_name", type(tokenizer).__name__)
