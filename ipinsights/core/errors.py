"""Errors about input data that every layer raises: one type, so a job maps it to one exit code."""

from __future__ import annotations


class DataFormatError(ValueError):
    """An input file does not have the expected shape; the message names the file and line."""
