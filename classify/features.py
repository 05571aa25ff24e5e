"""Checking cached feature arrays and normalising them per layer."""
from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("layer", "standard", "none")  # see normalization_stats


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


def unit_length(X: np.ndarray, inplace: bool = False) -> np.ndarray:
    """X (n, L, H) with every document's vector in every layer scaled to length √H (cosine geometry);
    `inplace` overwrites X (float32) instead of copying it."""
    norms = np.linalg.norm(X, axis=-1, keepdims=True) / np.sqrt(X.shape[-1])  # (n, L, 1)
    if inplace:
        X /= np.maximum(norms, 1e-12)
        return X
    return (X / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def normalization_stats(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), (n_layers, hidden) each, such that (prepare(X, mode) - mean) / std is the normalised X.

    "layer" (X already unit-length, see prepare): centred, and each layer weighted by its isotropy
    ι = √(1 - |mean unit vector|²), so its root mean square is ι². A layer whose documents all point one way
    (anisotropic, as middle layers of most transformers) counts less than a spread-out one; per-dimension
    scale is left alone. "standard": per-dimension standardisation. "none": as is.
    """
    L, H = X.shape[1:]
    if mode == "none":
        return np.zeros((L, H), np.float32), np.ones((L, H), np.float32)
    if mode == "standard":
        return layer_stats(X)
    mean = X.mean(axis=0)  # (L, H)
    iota = np.sqrt(np.clip(1.0 - (mean ** 2).sum(-1) / H, 1e-6, 1.0))  # (L,)
    return mean.astype(np.float32), np.broadcast_to(1.0 / iota[:, None], (L, H)).astype(np.float32)


def prepare(X: np.ndarray, mode: str, inplace: bool = False) -> np.ndarray:
    """The per-document step of a normalisation (before mean and std): unit length for "layer"."""
    return unit_length(X, inplace) if mode == "layer" else X


def normalised(X: np.ndarray, mode: str) -> np.ndarray:
    """X (n, L, H) normalised by its own rows' statistics, as a head trained on these rows sees them."""
    Z = prepare(X, mode)
    mean, std = normalization_stats(Z, mode)
    return (Z - mean) / std


def check_known_labels(classes: np.ndarray, y: object) -> np.ndarray:
    """y as an array, refusing labels the head never saw (they could only ever count as errors)."""
    y = np.asarray(y)
    unseen = sorted(set(y.tolist()) - set(np.asarray(classes).tolist()), key=str)
    if unseen:
        raise ValueError(f"y: labels {unseen[:5]} were not among the training classes {list(classes)[:10]}. "
                         "Map them to the training label names (e.g. a label mapping for out-of-domain "
                         "evaluation), or drop those rows.")
    return y
