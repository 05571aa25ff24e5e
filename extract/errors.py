"""Errors raised by the extract stage. Each message says what was expected, what arrived, and the fix."""
from __future__ import annotations


class InputError(ValueError):
    """The corpus cannot be read as asked: names the file, the first offending rows and the fix."""


class CacheMismatchError(RuntimeError):
    """An existing cache was built from another corpus or other settings than the ones asked for."""


class OutputBusyError(RuntimeError):
    """Another run is writing the same output (outputs.py)."""


class CacheFormatError(RuntimeError):
    """A file is not a finetext cache, or its contents fail verification."""


def first_rows(rows: list[str], total: int, shown: int = 5) -> str:
    """'row 3, row 9 and 12 more' for error messages."""
    head = ", ".join(rows[:shown])
    return head if total <= shown else f"{head} and {total - shown} more"
