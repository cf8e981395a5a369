"""Errors a user can cause, each carrying a one-line message that names the input.

The command line turns these into ``vlm: error: MESSAGE`` and an exit status,
never a traceback. An error about one named option (``InvalidOption``) reads in
Python terms from the API (``beams=0: must be at least 1``) and in flag terms
from the command line (``--beams 0: must be at least 1``): the option is named
once, where it is checked. Any other error whose advice names how to pass something
(``vlm.load("hf:/path/to/dir")`` / ``--model hf:/path/to/dir``) carries its command-line
wording as ``cli=``; ``cli_message()`` is what the command line prints.
"""

from __future__ import annotations

from typing import Optional


class VlmError(Exception):
    """Base class: a problem with what the user asked for, not a bug in vlm. ``str()`` reads in
    Python terms; ``cli``, when given, is the same error worded for the command line."""

    def __init__(self, *args, cli: Optional[str] = None) -> None:
        super().__init__(*args)
        self.cli = cli

    def cli_message(self) -> str:
        """The error as the command line prints it."""
        return self.cli if self.cli is not None else str(self)


class UsageError(VlmError):
    """Bad arguments: an empty label list, an option out of range."""


class InvalidOption(UsageError, ValueError):
    """One option has a value that cannot work; ``str()`` is ``"name=value: reason"``. A ValueError
    too, so code that checks values with ``except ValueError`` keeps working. ``flag`` is the
    command line's name for it when that is not ``--name-with-dashes`` (``out_dir`` is ``--out``)."""

    def __init__(self, name: str, value, reason: str, flag: Optional[str] = None) -> None:
        super().__init__(f"{name}={value!r}: {reason}")
        self.name, self.value, self.reason, self.flag = name, value, reason, flag

    def cli_message(self) -> str:
        """The same error for the command line: ``--name-with-dashes VALUE: reason``."""
        import shlex

        value = shlex.quote(self.value) if isinstance(self.value, str) else self.value
        return f"{self.flag or '--' + self.name.replace('_', '-')} {value}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.name, self.value, self.reason, self.flag))


class ImageLoadError(VlmError, ValueError):
    """An image could not be found or decoded; ``str()`` is ``"<input>: <reason>"``.

    ``Pipeline.caption(..., on_error="return")`` (and classify, similarity) put one of these in
    place of the result of each image that failed, so the good results are kept."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self):  # keep picklable (multiprocessing data loaders)
        return (type(self), (self.source, self.reason))


class ModelError(VlmError):
    """The model cannot be found or loaded."""


class CheckpointError(ModelError):
    """A checkpoint directory that is missing, unreadable or does not match its architecture."""


def how_to_load(model: str, pretrained: Optional[str] = None) -> tuple[str, str]:
    """How to load ``model`` (and its ``pretrained`` weights), worded for Python and for the
    command line: ``('vlm.load("hf:/path/to/dir")', '--model hf:/path/to/dir')``. For advice
    in an error: ``ModelError(f"...; load it with {api}", cli=f"...; pass {cli}")``."""
    api = f'vlm.load("{model}"' + (f', pretrained="{pretrained}"' if pretrained is not None else "") + ")"
    cli = f"--model {model}" + (f" --pretrained {pretrained}" if pretrained is not None else "")
    return api, cli


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, or its class name when it has none:
    the reason to quote in a one-line message about a library's multi-line error."""
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
