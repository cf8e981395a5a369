"""Writing files and directories so that a crash never leaves a half-written one under the real name.

A directory is built under ``NAME.partial`` beside its target, flushed to disk (fsync of every file
and of the directories) and renamed into place: a reader sees the old directory or the complete new
one, never a mix. ``prune_partial`` removes what a killed writer left. A single file is written to a
temporary name in its own directory, fsynced and moved over the old one with ``os.replace``.

    with atomic_directory(out / "step_0000020") as tmp:
        save(tmp)              # tmp is out/step_0000020.partial
    write_atomic(out / "config.json", text)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Union

PARTIAL = ".partial"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first."""
    dirs = []
    for here, _, files in os.walk(root):
        dirs.append(Path(here))
        for name in files:
            _fsync(Path(here) / name)
    for d in reversed(dirs):
        _fsync(d)


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + PARTIAL)


@contextlib.contextmanager
def atomic_directory(target: Union[str, Path], replace: bool = True) -> Iterator[Path]:
    """Yield an empty ``TARGET.partial`` to fill; on success it becomes ``target``.

    An existing ``target`` is replaced (``replace=True``): the new directory is renamed in
    and the old one removed afterwards. On an exception the partial directory is left for
    ``prune_partial`` (other processes of a distributed run may still be writing into it)."""
    target = Path(target)
    tmp = partial_path(target)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    commit_directory(tmp, target, replace)


def commit_directory(tmp: Path, target: Path, replace: bool = True) -> None:
    """fsync ``tmp`` and rename it to ``target`` (the last step of ``atomic_directory``)."""
    fsync_tree(tmp)
    old = None
    if target.exists():
        if not replace:
            raise FileExistsError(f"{target}: already exists")
        old = target.with_name(target.name + ".old" + PARTIAL)
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prune_partial(parent: Union[str, Path]) -> list[Path]:
    """Remove the ``*.partial`` leftovers of killed writers directly under ``parent``."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    gone = sorted(p for p in parent.iterdir() if p.name.endswith(PARTIAL))
    for p in gone:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)
