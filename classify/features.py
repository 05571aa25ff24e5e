"""Checking cached feature arrays and normalising them per layer."""
from __future__ import annotations

import numpy as np


def check_features(X: object, *, name: str = "X", expected: tuple[int, int] | None = None) -> np.ndarray:
    """X as a float32 array (n_docs, n_layers, hidden), with errors that say what arrived and the fix.

    expected: (n_layers, hidden) a fitted head was trained on; another shape is refused naming both.
    """
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric array (n_docs, n_layers, hidden), got "
                         f"{type(X).__name__} ({exc}).") from None
    if arr.ndim != 3:
        hint = (" For one layer, add the layer axis: X[:, None, :]." if arr.ndim == 2 else "")
        raise ValueError(f"{name}: expected a 3-D array (n_docs, n_layers, hidden), got shape {arr.shape}.{hint} "
                         "Read one from a cache with open_cache(path).features('mean').")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no documents (shape {arr.shape}).")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
        raise ValueError(f"{name}: NaN or inf features in {len(bad)} document(s), first rows {bad[:5].tolist()}. "
                         "Check the cache with `finetext verify`, or drop those rows.")
    if expected is not None and tuple(arr.shape[1:]) != tuple(expected):
        raise ValueError(f"{name}: this head was fitted on features of shape (n_layers, hidden) = {tuple(expected)}, "
                         f"got {tuple(arr.shape[1:])}. Use features from the same model (and layer count) the head "
                         "was trained on.")
    return arr


def layer_stats(X: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer, per-dimension mean and standard deviation, (n_layers, hidden) each, floored at 1e-6."""
    if weights is None:
        mean = X.mean(axis=0)
        std = X.std(axis=0)
    else:
        w = weights / weights.sum()
        mean = np.einsum("n,nlh->lh", w, X)
        std = np.sqrt(np.einsum("n,nlh->lh", w, (X - mean) ** 2))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def check_known_labels(classes: np.ndarray, y: object) -> np.ndarray:
    """y as an array, refusing labels the head never saw (they could only ever count as errors)."""
    y = np.asarray(y)
    unseen = sorted(set(y.tolist()) - set(np.asarray(classes).tolist()), key=str)
    if unseen:
        raise ValueError(f"y: labels {unseen[:5]} were not among the training classes {list(classes)[:10]}. "
                         "Map them to the training label names (e.g. a label mapping for out-of-domain "
                         "evaluation), or drop those rows.")
    return y
