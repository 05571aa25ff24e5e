"""Which rows to label next: query strategies for simulated active learning on cached features.

A strategy is a function `strategy(features, proba, picked, n, rng) -> indices`:

- features: (N, L, H) the cached features of every training row, labelled or not;
- proba: (N, C) the current head's class probabilities for every row (None for a strategy whose attribute
  `uses_proba` is False: no head has to predict the pool for it);
- picked: (N,) bool, the rows labelled so far;
- n: how many rows to pick; rng: a numpy Generator seeded for this seed and round.

It returns n distinct indices of rows not yet picked. Ties are broken at random (rng), so a strategy is
deterministic given its seed. `Oracle` is the simulated annotator: it tells the label of a row only when the row is
picked.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from finetext.classify.budget import sample_budget

Strategy = Callable[..., np.ndarray]


class Oracle:
    """The labels of the training rows, told only for the rows asked about (a simulated annotator)."""

    def __init__(self, labels: np.ndarray) -> None:
        self._labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self._labels)

    def start(self, per_class: int, seed: int) -> np.ndarray:
        """The seeded, stratified start set: `per_class` rows of each class (all of a smaller class's rows), as
        a campaign's first labelled rows. Its labels are told with `label`."""
        return sample_budget(self._labels, per_class=per_class, random_state=seed, fallback="all")

    def label(self, rows: np.ndarray) -> np.ndarray:
        return self._labels[np.asarray(rows, dtype=np.int64)]


def _top(scores: np.ndarray, picked: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The n unpicked rows of highest score, ties broken at random."""
    pool = np.flatnonzero(~picked)
    pool = pool[rng.permutation(len(pool))]
    return pool[np.argsort(-scores[pool], kind="stable")[:n]]


def random(features: np.ndarray, proba: np.ndarray | None, picked: np.ndarray, n: int,
           rng: np.random.Generator) -> np.ndarray:
    """Rows drawn at random: the baseline, as a sweep draws its budgets."""
    pool = np.flatnonzero(~picked)
    return rng.choice(pool, size=min(n, len(pool)), replace=False)


def uncertainty(features, proba, picked, n, rng) -> np.ndarray:
    """Least confidence: the rows whose most likely class is least likely."""
    return _top(-proba.max(axis=1), picked, n, rng)


def margin(features, proba, picked, n, rng) -> np.ndarray:
    """The rows with the smallest gap between their two most likely classes."""
    two = np.partition(proba, proba.shape[1] - 2, axis=1)[:, -2:]
    return _top(-(two[:, 1] - two[:, 0]), picked, n, rng)


def entropy(features, proba, picked, n, rng) -> np.ndarray:
    """The rows whose predicted distribution has the most entropy."""
    p = np.clip(proba, 1e-12, 1.0)
    return _top(-(p * np.log(p)).sum(axis=1), picked, n, rng)


def diversity(features, proba, picked, n, rng) -> np.ndarray:
    """k-means++ seeding from the labelled rows on the last layer's unit vectors: each pick is drawn with
    probability proportional to its squared distance from the nearest labelled or already picked row, so the
    picks spread over the regions of the corpus the labels do not cover yet, and outliers are not favoured as a
    farthest-point (core-set) pick would favour them."""
    z = features[:, -1].astype(np.float32)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    near = np.full(len(z), -np.inf, np.float32)  # each row's cosine to its nearest labelled row
    for start in range(0, int(picked.sum()), 1024):
        near = np.maximum(near, (z @ z[np.flatnonzero(picked)[start:start + 1024]].T).max(axis=1))
    taken = picked.copy()
    out = []
    for _ in range(min(n, int((~picked).sum()))):
        d2 = np.where(taken, 0.0, np.clip(2.0 - 2.0 * near, 0.0, None)).astype(np.float64)
        total = d2.sum()
        row = int(rng.choice(np.flatnonzero(~taken))) if total <= 0 else int(rng.choice(len(z), p=d2 / total))
        out.append(row)
        taken[row] = True
        near = np.maximum(near, z @ z[row])
    return np.array(out, dtype=np.int64)


random.uses_proba = False
diversity.uses_proba = False

STRATEGIES: dict[str, Strategy] = {"random": random, "uncertainty": uncertainty, "margin": margin,
                                   "entropy": entropy, "diversity": diversity}
