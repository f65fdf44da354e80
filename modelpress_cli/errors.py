"""The one family of errors modelpress raises on purpose; the CLI prints each as one line."""

from __future__ import annotations

import os


class ModelpressError(Exception):
    """Base of every error raised on purpose; the CLI prints it as one line."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 tensor: str | None = None) -> None:
        super().__init__(message)
        self.message, self.path, self.tensor = message, path, tensor

    def at(self, *, path: str | os.PathLike | None = None,
           tensor: str | None = None) -> ModelpressError:
        """Fill in the file and tensor where they are not known yet; returns self to re-raise."""
        if self.path is None:
            self.path = path
        if self.tensor is None:
            self.tensor = tensor
        return self

    def __str__(self) -> str:
        prefix = f"{os.fspath(self.path)}: " if self.path is not None else ""
        if self.tensor is not None:
            prefix += f"tensor {self.tensor!r}: "  # repr() escapes control characters
        return prefix + self.message


class FormatError(ModelpressError):
    """An input file is malformed, truncated or of a kind we do not read."""


class IntegrityError(ModelpressError):
    """A checksum or a decoded size does not match what the file declares."""


class ConfigError(ModelpressError):
    """An option, stage parameter or file name the user gave is wrong: a usage error."""

    exit_code = 2


class OutputExistsError(ModelpressError):
    """The output exists and --force was not given, or the output is the input."""


class MetricDropError(ModelpressError):
    """The compressed model's task metric dropped more than allowed; the .mpz is written."""

    exit_code = 3

    def __init__(self, message: str, *, report, **where) -> None:
        super().__init__(message, **where)
        self.report = report  # so the caller can still show what was measured
