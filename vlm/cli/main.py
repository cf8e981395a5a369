"""The ``vlm`` command: a thin dispatcher that imports only the subcommand it runs.

    vlm caption IMAGE_OR_DIR... [--model M] [--beams N] [--json]
    vlm classify IMAGE_OR_DIR... --labels "cat,dog" [--template T]... [--top-k K]
    vlm similarity --images IMG... --texts TEXT... [--plot FILE.png]
    vlm models | vlm data shapes | vlm evaluate | vlm convert | vlm explain | vlm export
    vlm index SRC... --out INDEX | vlm search INDEX --text T | vlm serve INDEX

Exit status: 0 every input succeeded, 1 some inputs failed, 2 usage or model error.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

COMMANDS = {
    "caption": ("vlm.cli.caption", "caption images"),
    "classify": ("vlm.cli.classify", "zero-shot classify images with text labels"),
    "similarity": ("vlm.cli.similarity", "image-text cosine-similarity matrix (and heatmap)"),
    "models": ("vlm.cli.models", "list the named model configs and available checkpoints"),
    "data": ("vlm.cli.data", "make datasets: `vlm data shapes`"),
    "evaluate": ("vlm.cli.evaluate", "captioning, retrieval and zero-shot metrics on a dataset"),
    "convert": ("vlm.cli.convert", "import open_clip or Hugging Face CLIP/CoCa weights"),
    "explain": ("vlm.cli.explain", "figures of what the ViT learned"),
    "export": ("vlm.cli.export", "write a model as ONNX, a transformers CLIPModel or an open_clip checkpoint"),
    "index": ("vlm.cli.index", "embed images into a searchable index (incremental)"),
    "search": ("vlm.cli.search", "search an index with text or an image"),
    "serve": ("vlm.cli.serve", "web page and JSON API over an index"),
}


def _usage() -> str:
    lines = ["usage: vlm COMMAND [ARGS]   (vlm COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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


def run_command(name: str, argv: list[str]) -> int:
    """Run one subcommand, turning every expected failure into one line and an exit status."""
    from vlm.errors import VlmError

    try:
        module = importlib.import_module(COMMANDS[name][0])
        return module.main(argv)
    except VlmError as e:
        print(f"vlm {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlm {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help and errors
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:  # a bug in vlm: still one line, the traceback on request
        if os.environ.get("VLM_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"vlm {name}: internal error: {type(e).__name__}: {msg} (set VLM_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
