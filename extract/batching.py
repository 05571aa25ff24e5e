"""Length-sorted batches bounded by a token budget rather than a fixed document count."""
from __future__ import annotations

from typing import Sequence

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


def pad_right(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, rows: Sequence[int],
              pad_id: int) -> dict[str, np.ndarray]:
    """Model inputs for documents `rows`, padded on the right to the longest: input_ids, attention_mask and,
    when the tokenizer gives them, token_type_ids, each (batch, seq) int64.

    Right padding for every model: positions start at 0 for every document, which causal models need;
    pooling does not care which side is padded.
    """
    lengths = [len(ids[i]) for i in rows]
    width = max(lengths)
    batch = {"input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
             "attention_mask": np.zeros((len(rows), width), dtype=np.int64)}
    if types is not None:
        batch["token_type_ids"] = np.zeros((len(rows), width), dtype=np.int64)
    for row, (i, n) in enumerate(zip(rows, lengths)):
        batch["input_ids"][row, :n] = ids[i]
        batch["attention_mask"][row, :n] = 1
        if types is not None:
            batch["token_type_ids"][row, :n] = types[i]
    return batch
