"""Errors raised by the classify stage. Each message says what was expected, what arrived, and the fix."""
from __future__ import annotations


class HeadFormatError(ValueError):
    """A folder is not a saved head, or a saved head's files disagree with each other or with the features."""
