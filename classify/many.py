"""Fitting many independent heads at once: different budgets, seeds or both, one vectorised pass."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import clone

from finetext.classify.features import check_features
from finetext.classify.heads import _StackHead


def fit_many(head: object, X: object, y: object, row_sets: Sequence[np.ndarray],
             seeds: Sequence[int] | None = None) -> list[object]:
    """One fitted copy of `head` per row set, as if each were `clone(head).set_params(random_state=s).fit(X[r], y[r])`.

    Vectorised heads (ScalarMix, LayerAttention) train every row set in shared stacks: one forward and one
    backward pass for all. Other estimators are fitted one after another.
    """
    seeds = list(seeds) if seeds is not None else list(range(len(row_sets)))
    if len(seeds) != len(row_sets):
        raise ValueError(f"seeds: expected one per row set ({len(row_sets)}), got {len(seeds)}.")
    X = check_features(X)
    y = np.asarray(y)
    if not isinstance(head, _StackHead):
        return [clone(head).set_params(random_state=s).fit(X[r], y[r]) for r, s in zip(row_sets, seeds)]
    head._check_params()
    # every set gets the label coding of its own classes, as fit() would
    groups: dict[tuple, list[int]] = {}
    for i, rows in enumerate(row_sets):
        groups.setdefault(tuple(np.unique(y[rows]).tolist()), []).append(i)
    out: list[object] = [None] * len(row_sets)
    for classes_key, members in groups.items():
        if len(classes_key) < 2:
            raise ValueError(f"row set {members[0]} holds one class only ({classes_key[0]!r}); "
                             "draw budgets that cover every class (sample_budget).")
        classes = np.unique(y[row_sets[members[0]]])
        codes = np.searchsorted(classes, y)
        codes = np.where(np.isin(y, classes), codes, 0)
        states = head._fit_sets(X, codes, len(classes), [np.asarray(row_sets[i]) for i in members],
                                [seeds[i] for i in members], class_weights=head._class_weights(classes))
        for i, state in zip(members, states):
            est = clone(head).set_params(random_state=seeds[i])
            est._set_fitted(classes, X.shape, state)
            out[i] = est
    return out
