"""Errors a user can cause, each carrying a one-line message that names the input.

The command line turns these into ``vlm: error: MESSAGE`` and an exit status,
never a traceback. An error about one named option (``InvalidOption``) reads in
Python terms from the API (``beams=0: must be at least 1``) and in flag terms
from the command line (``--beams 0: must be at least 1``): the option is named
once, where it is checked.
"""

from __future__ import annotations


class VlmError(Exception):
    """Base class: a problem with what the user asked for, not a bug in vlm."""


class UsageError(VlmError):
    """Bad arguments: an empty label list, an option out of range."""


class InvalidOption(UsageError, ValueError):
    """One option has a value that cannot work; ``str()`` is ``"name=value: reason"``. A ValueError
    too, so code that checks values with ``except ValueError`` keeps working."""

    def __init__(self, name: str, value, reason: str) -> None:
        super().__init__(f"{name}={value!r}: {reason}")
        self.name, self.value, self.reason = name, value, reason

    def cli_message(self) -> str:
        """The same error for the command line: ``--name-with-dashes VALUE: reason``."""
        import shlex

        value = shlex.quote(self.value) if isinstance(self.value, str) else self.value
        return f"--{self.name.replace('_', '-')} {value}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.name, self.value, self.reason))


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


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, or its class name when it has none:
    the reason to quote in a one-line message about a library's multi-line error."""
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
