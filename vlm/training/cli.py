"""The training process's entry point: ``scripts/train.py`` and ``vlm train``'s children run ``main``.

    accelerate launch scripts/train.py --config configs/micro.yaml steps=50
    python -m vlm.training.cli --config configs/micro.yaml          # what `vlm train` launches

Exit status: 0 done, 1 the run failed (a non-finite loss; the message names the step), 2 a bad
config or data path, 130 interrupted (Ctrl-C). Every failure is one line on stderr, printed by
the main process only when several run (the processes fail together: the config and the
files are the same for all, and the loss check is gathered across them).

``preflight`` checks what can be checked before any process group or device is set up (the
config, the data paths, the checkpoint to resume from); ``vlm train`` runs it before it
launches anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from vlm.runtime.process_group import leave

PROG = "train.py"


class TrainFailed(Exception):
    """A finished-badly run: its one-line message and exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train a CoCa or CLIP model with Accelerate.")
    parser.add_argument("--config", help="YAML training recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config fields")
    return parser


def is_main_process(environ=os.environ) -> bool:
    """Rank 0 of a launched group, or a process started alone."""
    return environ.get("RANK", "0") == "0"


def preflight(config: Optional[str], overrides: list[str]):
    """The checked ``TrainConfig``, or ``TrainFailed`` (exit 2) for a bad config, a missing data
    directory or layout or a ``resume`` with nothing to resume from; builds nothing."""
    from vlm.errors import VlmError
    from vlm.training.config import load_train_config

    try:
        cfg = load_train_config(config, overrides)
    except (FileNotFoundError, ValueError, TypeError) as e:  # a ConfigError names the file as --config PATH
        raise TrainFailed(e.cli_message() if isinstance(e, VlmError) else str(e), 2) from None
    if cfg.task == "caption":  # (a classify task reads class folders, a CSV or hf:SPEC: its own checks)
        d = cfg.data
        local = [("data.root", d.root)] if d.kind in ("shapes", "coco", "karpathy") else []
        if d.val_root and d.kind in ("shapes", "coco"):
            local.append(("data.val_root", d.val_root))
        for key, path in local:
            if not Path(path).is_dir():
                raise TrainFailed(f"{key}={path}: no such dataset directory", 2)
        from vlm.training.data import check_data

        try:
            check_data(cfg)  # the layout, the splits, the annotation files: what training would open
        except (FileNotFoundError, ValueError) as e:
            raise TrainFailed(str(e), 2) from None
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise TrainFailed(f"output_dir={out}: exists and is not a directory", 2)
    if cfg.resume:
        from vlm.training.state import find_resume

        try:
            find_resume(out, cfg.resume)
        except FileNotFoundError as e:
            raise TrainFailed(str(e), 2) from None
    return cfg


def run(config: Optional[str], overrides: list[str]) -> dict:
    """Preflight, then train; ``TrainFailed`` for every expected failure."""
    cfg = preflight(config, overrides)
    from vlm.errors import VlmError
    from vlm.training.loop import NonFiniteLossError, train  # torch, accelerate: after the config is good

    try:
        return train(cfg)
    except NonFiniteLossError as e:
        raise TrainFailed(str(e), 1) from None
    except (VlmError, FileNotFoundError, KeyError) as e:
        raise TrainFailed(str(e.args[0] if isinstance(e, KeyError) and e.args else e), 2) from None


class InterruptRecord:
    """While active, the first SIGINT is noted (``seen``) and raises KeyboardInterrupt; later ones
    are ignored (torchrun passes Ctrl-C on to its processes a second time, which would break into
    the clean exit). Only where SIGINT has Python's default handler, in the main thread (an
    ignored SIGINT stays ignored)."""

    def __init__(self) -> None:
        self.seen = False
        self._installed = False

    def _handler(self, signum, frame):
        self.seen = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the process is stopping: once is enough
        raise KeyboardInterrupt

    def __enter__(self) -> "InterruptRecord":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed and not self.seen:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _end_progress_bars() -> None:
    """Close the training progress bar, so that a message starts on a line of its own."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    return leave(_main(argv, prog))  # the process group destroyed before shutdown (vlm.runtime.process_group)


def _main(argv: Optional[list[str]], prog: Optional[str]) -> int:
    from vlm.training.parent_watch import LAUNCHER_PID_VAR, parent_gone, stop_message, watch_parent

    prog = prog or ("vlm train" if os.environ.get(LAUNCHER_PID_VAR) else PROG)
    watch_parent()  # a child of a launcher stops when the launcher dies (kill -9 leaves no orphan)
    args = build_parser(prog).parse_args(argv)
    with InterruptRecord() as interrupts:
        try:
            try:
                run(args.config, args.overrides)
            except Exception:
                if interrupts.seen:  # Ctrl-C during a collective: it fails once a peer process has stopped
                    raise KeyboardInterrupt from None
                if parent_gone():  # the launcher died and a peer stopped first: a collective failed
                    print(stop_message(), file=sys.stderr, flush=True)
                    return 128 + signal.SIGTERM
                raise
        except TrainFailed as e:
            _end_progress_bars()
            if is_main_process():
                print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
            return e.code
        except KeyboardInterrupt:
            _end_progress_bars()
            if is_main_process():
                print(f"{prog}: interrupted; continue from the last checkpoint with resume=latest",
                      file=sys.stderr, flush=True)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
