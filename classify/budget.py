"""Label budgets: which training rows a run may see, drawn stratified and reproducibly."""
from __future__ import annotations

import hashlib

import numpy as np


def _rng(seed: int, *salt: object) -> np.random.Generator:
    # numpy's PCG64 stream is the same on every platform; salting by class keeps budgets nested per class
    digest = hashlib.sha256(repr((seed, *salt)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_budget(y: np.ndarray, *, per_class: int | None = None, total: int | None = None,
                  random_state: int = 0, fallback: str = "error") -> np.ndarray:
    """Row indices of a stratified label budget: `per_class` rows of each class, or `total` rows in all.

    Each class's rows are drawn from one seeded permutation of that class, so a smaller budget is a subset
    of a larger one with the same seed (learning curves compare like with like), and the same seed gives the
    same rows on any machine. `total` is split across classes in proportion to their frequency, at least one
    each. A class with fewer rows than asked is an error naming it; fallback="all" takes all its rows instead.
    Returns sorted indices into y.
    """
    y = np.asarray(y)
    if (per_class is None) == (total is None):
        raise ValueError("sample_budget: give exactly one of per_class=k or total=n.")
    if fallback not in ("error", "all"):
        raise ValueError(f"fallback: expected 'error' or 'all', got {fallback!r}.")
    classes, counts = np.unique(y, return_counts=True)
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"per_class: expected a positive integer, got {per_class}.")
        want = np.full(len(classes), per_class)
    else:
        if total < len(classes):
            raise ValueError(f"total={total} is smaller than the number of classes ({len(classes)}); "
                             "every class needs at least one row.")
        if total > len(y):
            raise ValueError(f"total={total} exceeds the {len(y)} rows available.")
        # largest remainder apportionment, at least one per class
        share = counts / counts.sum() * total
        want = np.maximum(1, np.floor(share).astype(int))
        for i in np.argsort(-(share - np.floor(share)), kind="stable")[: max(0, total - want.sum())]:
            want[i] += 1
        while want.sum() > total:
            want[np.argmax(want)] -= 1
    short = [(c, n, k) for c, n, k in zip(classes, counts, want) if n < k]
    if short and fallback == "error":
        c, n, k = short[0]
        raise ValueError(
            f"class {c.item()!r} has {n} rows, fewer than the {k} asked for"
            + (f" (and {len(short) - 1} more classes are short)" if len(short) > 1 else "")
            + ". Use a smaller budget, or fallback='all' to take every row of short classes."
        )
    rows = []
    for c, k in zip(classes, want):
        members = np.flatnonzero(y == c)
        rows.append(members[_rng(random_state, str(c)).permutation(len(members))[:k]])
    return np.sort(np.concatenate(rows))


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold id per row: each class's rows shuffled (seeded) then dealt round-robin. (n,)"""
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        folds[members[rng.permutation(len(members))]] = np.arange(len(members)) % n_folds
    return folds
