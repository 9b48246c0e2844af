"""Exceptions that the CLI turns into one clear line and exit code 2.

Every error a user can fix (bad config, bad data, bad checkpoint) is an
``MmauditError``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MmauditError(Exception):
    """Base class: a problem with the user's input, reported as one line, exit 2."""

    exit_code = 2
    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(MmauditError):
    """The YAML config is missing, malformed, or names something that does not exist."""


class DataError(MmauditError):
    """The manifest or a file it points to is missing, unreadable or invalid."""


class ModelLoadError(MmauditError):
    """The checkpoint, factory or TorchScript file cannot be loaded or does not fit."""


class DeviceError(MmauditError):
    """The requested device is not available on this machine."""


class CheckError(MmauditError):
    """A check name is unknown or its parameters are invalid."""


class ReportError(MmauditError):
    """A report folder is missing, truncated or of an unreadable schema."""


class NonFiniteOutputError(MmauditError):
    """The model returned NaN or inf (logits or a captured layer) for some rows. The run
    stops: every check would build on those numbers. Raised from inside checks too (an
    ablated sweep), so the runner must let it through rather than mark that check 'error'."""
