"""The ``vlm`` command: a thin dispatcher that imports only the subcommand it runs.

    vlm caption IMAGE_OR_DIR... [--model M] [--beams N] [--json]
    vlm classify IMAGE_OR_DIR... --labels "cat,dog" [--template T]... [--top-k K]
    vlm similarity --images IMG... --texts TEXT... [--plot FILE.png]
    vlm models | vlm data shapes | vlm evaluate | vlm convert | vlm explain | vlm export
    vlm index SRC... --out INDEX | vlm search INDEX --text T | vlm serve INDEX
    vlm train --config FILE.yaml [key=value ...] [accelerate launch options]

Exit status: 0 every input succeeded, 1 some inputs failed, 2 usage or model error.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Optional

COMMANDS = {
    "caption": ("vlm.cli.caption", "caption images"),
    "classify": ("vlm.cli.classify", "classify images: zero-shot with text labels, or with a classifier"),
    "probe": ("vlm.cli.probe", "linear probe on frozen ViT features; writes a classifier"),
    "similarity": ("vlm.cli.similarity", "image-text cosine-similarity matrix (and heatmap)"),
    "models": ("vlm.cli.models", "list the named model configs and available checkpoints"),
    "data": ("vlm.cli.data", "make datasets: `vlm data shapes`"),
    "evaluate": ("vlm.cli.evaluate", "captioning, retrieval and zero-shot metrics on a dataset"),
    "convert": ("vlm.cli.convert", "import open_clip or Hugging Face CLIP/CoCa weights"),
    "explain": ("vlm.cli.explain", "figures of what the ViT learned"),
    "export": ("vlm.cli.export", "write a model as ONNX, a transformers CLIPModel or an open_clip checkpoint"),
    "index": ("vlm.cli.index", "embed images into a searchable index (incremental)"),
    "search": ("vlm.cli.search", "search an index with text or an image"),
    "serve": ("vlm.cli.serve", "model server: caption, classify, embed, search over HTTP (and a page)"),
    "check-precision": ("vlm.cli.check_precision", "how close bf16 or int8 stays to fp32 on your images"),
    "serve-ray": ("vlm.cli.serve_ray", "vlm serve on Ray Serve replicas (the ray extra)"),
    "train": ("vlm.training.launch", "train a model: accelerate launch with training's exit status"),
}


def _usage() -> str:
    lines = ["usage: vlm COMMAND [ARGS]   (vlm COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from vlm.runtime.threads import configure

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # a server runs for hours: the load when it starts says nothing of the load
        configure(load=None)  # while it serves, so it takes every usable core (threads wait passively)
    elif argv[:1] != ["train"]:  # training sets its own threads (num_threads); a launch-time guess would stick
        configure()  # OpenMP wait policy and thread count for the machine as it is, before torch loads
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from vlm import __version__

        print(f"vlm {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"vlm: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return run_command(name, argv[1:])


def _show_notes_as_lines(name: str) -> None:
    """Warnings that carry a CLI wording (vlm.trust.ood's notice, vlm.trust.vocabulary's warning) print as
    one ``vlm NAME: note:`` line (``warning:`` for those with ``cli_level = "warning"``)."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if hasattr(message, "cli_message"):
            print(f"vlm {name}: {getattr(message, 'cli_level', 'note')}: {message.cli_message()}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def run_command(name: str, argv: list[str]) -> int:
    """Run one subcommand, turning every expected failure into one line and an exit status."""
    from vlm.runtime.process_group import leave

    _show_notes_as_lines(name)
    code = guarded(f"vlm {name}", lambda: importlib.import_module(COMMANDS[name][0]).main(argv))
    return leave(code)  # a launched command (``accelerate launch ... vlm.cli.main index``) ends its group


def guarded(prog: str, run: Callable[[], int]) -> int:
    """``run()``'s exit status, every expected failure one ``PROG: error: ...`` line and status 2
    (a command with subcommands, ``vlm data``, names the subcommand it runs this way)."""
    from vlm.errors import VlmError, first_line

    try:
        return run()
    except VlmError as e:
        message = e.cli_message() if hasattr(e, "cli_message") else str(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vlm caption DIR | head -1`): stop quietly, as cat does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, the status a shell gives a process killed by a broken pipe
    except SystemExit as e:  # argparse's --help and errors
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:  # a bug in vlm: still one line, the traceback on request
        if os.environ.get("VLM_DEBUG"):
            raise
        msg = first_line(e) if str(e).strip() else ""
        print(f"{prog}: internal error: {type(e).__name__}: {msg} (set VLM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
