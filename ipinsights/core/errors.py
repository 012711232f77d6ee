"""Errors that every layer raises and every job maps to one exit code: the user's to fix, not a bug.

:class:`UsageError` (exit 2): a setting, an argument, a missing input or a file of the wrong kind; the
message says what to change. :class:`DataFormatError` is one. Anything else that escapes a job is a bug
or a failure of the platform (exit 1, with its traceback).
"""

from __future__ import annotations


class UsageError(ValueError):
    """The user's to fix (exit 2): a bad setting or argument, a missing or unusable input."""


class DataFormatError(UsageError):
    """An input file does not have the expected shape; the message names the file and line."""
