"""Length-sorted batches bounded by a token budget rather than a fixed document count."""
from __future__ import annotations

import numpy as np


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_docs: int = 1024) -> list[np.ndarray]:
    """Split positions into batches of similar length whose padded size stays within `max_tokens`.

    lengths: (n,) token counts. Longest batches come first, so an out-of-memory error shows at once.
    A single document longer than the budget still gets a batch of its own.
    Returns index arrays into `lengths`; together they hold every position exactly once.
    """
    if max_tokens < 1 or max_docs < 1:
        raise ValueError(f"max_tokens and max_docs must be >= 1, got {max_tokens} and {max_docs}.")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])  # sorted descending: the first is the batch's padded length
        size = max(1, min(max_docs, max_tokens // max(longest, 1)))
        batches.append(order[start:start + size])
        start += size
    return batches
