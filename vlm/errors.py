"""Errors a user can cause, each carrying a one-line message that names the input.

The command line turns these into ``vlm: error: MESSAGE`` and an exit status,
never a traceback.
"""


class VlmError(Exception):
    """Base class: a problem with what the user asked for, not a bug in vlm."""


class UsageError(VlmError):
    """Bad arguments: an empty label list, an option out of range."""


class ModelError(VlmError):
    """The model cannot be found or loaded."""


class CheckpointError(ModelError):
    """A checkpoint directory that is missing, unreadable or does not match its architecture."""
