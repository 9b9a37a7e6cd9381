"""The errors a user can cause, in one module that imports nothing (no torch, no NumPy).

Every class derives from :class:`UserError`: the command line prints such an error as one
``error: ...`` line and exits with status 2, without a traceback.  The file-naming errors keep
``ValueError`` as a base too, so ``except ValueError`` in callers still catches them.

* :class:`DatasetError` -- a dataset or image file is missing or malformed;
* :class:`CheckpointError` -- a model file (checkpoint folder or exported ONNX model) is missing,
  truncated, inconsistent or for another layout;
* :class:`ConfigError` -- a configuration file or override is invalid;
* :class:`DetectorUnavailable` -- the requested face detector cannot run in this install.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["UserError", "DatasetError", "CheckpointError", "ConfigError", "DetectorUnavailable"]


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and where (no traceback needed)."""


class _FileError(UserError, ValueError):
    """A problem with one file: ``path`` and ``problem`` kept, the message is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across worker processes despite the two-argument init
        return (type(self), (self.path, self.problem))


class DatasetError(_FileError):
    """A dataset file is missing or malformed.  The message names the file and the problem."""


class CheckpointError(_FileError):
    """A model file is missing, truncated, inconsistent or does not fit; the message names the file."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message names the key and where it came from."""


class DetectorUnavailable(UserError, RuntimeError):
    """The requested face detector cannot run in this install (the message says why and what to do)."""
