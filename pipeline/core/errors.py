"""Every error nanobatch raises on purpose, with the exit code the CLI gives it.

A class's docstring is its default message. Messages name the file, row, key or object,
the bad value, and what to do next. Nothing here does I/O.
"""

from __future__ import annotations


class PipelineError(Exception):
    """nanobatch failed; see the message above."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(PipelineError):
    """Bad input or usage."""

    exit_code = 2


class SpecError(UsageError):
    """The job spec is not valid."""


class InputError(UsageError):
    """The input table cannot be read."""


class NotFoundError(UsageError):
    """No such run or job in the ledger; `nanobatch status` lists the runs."""


class RuntimeFailure(PipelineError):
    """A runtime error (network, API, storage)."""


class Interrupted(PipelineError):
    """Interrupted (Ctrl-C)."""

    exit_code = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class StorageError(RuntimeFailure):
    """The output storage cannot be written."""


class ObjectConflict(PipelineError):
    """An object with different bytes already exists at that name and overwrite is off."""


class ApiError(RuntimeFailure):
    """The Gemini API answered with an error."""

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientApiError(ApiError):
    """The Gemini API is throttling or unavailable (429 or 5xx); try again later."""


class AuthError(ApiError):
    """The Gemini API refused the key. Set GEMINI_API_KEY (or GOOGLE_API_KEY) to a valid key."""

    exit_code = 2


class InvalidTransition(PipelineError):
    """That state change is not allowed."""


class StaleTransition(PipelineError):
    """Someone else changed that row first."""
