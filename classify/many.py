"""Fitting many independent heads at once: different budgets, seeds or both, one vectorised pass."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import clone

from finetext.classify.features import check_features
from finetext.classify.heads import StackHead


def fit_many(head: object, X: object, y: object, row_sets: Sequence[np.ndarray],
             seeds: Sequence[int] | None = None) -> list[object]:
    """One fitted copy of `head` per row set, as if each were `clone(head).set_params(random_state=s).fit(X[r], y[r])`.

    Vectorised heads (ScalarMix, LayerAttention) train every row set in shared stacks: one forward and one
    backward pass for all. Other estimators are fitted one after another.
    """
    seeds = list(seeds) if seeds is not None else list(range(len(row_sets)))
    if len(seeds) != len(row_sets):
        raise ValueError(f"seeds: expected one per row set ({len(row_sets)}), got {len(seeds)}.")
    if isinstance(head, StackHead):
        return head.fit_sets(X, y, row_sets, seeds)
    X, y = check_features(X), np.asarray(y)
    return [clone(head).set_params(random_state=s).fit(X[r], y[r]) for r, s in zip(row_sets, seeds)]
