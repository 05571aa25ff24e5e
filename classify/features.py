"""Checking cached feature arrays and normalising them per layer."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

NORMALIZATIONS = ("layer", "standard", "none")  # see normalization_stats


def check_features(X: object, *, name: str = "X", expected: tuple[int, int] | None = None,
                   owner: str = "this head") -> np.ndarray:
    """X as a float32 array (n_docs, n_layers, hidden), with errors that say what arrived and the fix. A 2-D X
    (n_docs, hidden) is one layer's features: (n_docs, 1, hidden), so plain embedding matrices work too.

    expected: (n_layers, hidden) a fitted head was trained on; another shape is refused naming both (and, as
    scikit-learn words it, the numbers of features). owner: the head's name in that message.
    """
    if sp.issparse(X):
        raise TypeError(f"{name}: sparse input is not supported; heads take dense features (n_docs, n_layers, "
                        "hidden). Pass X.toarray().")
    raw = X if isinstance(X, np.ndarray) else np.asarray(X)
    if np.iscomplexobj(raw):
        raise ValueError(f"{name}: Complex data not supported; features are real numbers (n_docs, n_layers, hidden).")
    try:
        arr = raw.astype(np.float32, copy=False)
    except (TypeError, ValueError) as exc:  # the same type, so callers can tell bad values from bad shapes
        raise type(exc)(f"{name}: expected a numeric array (n_docs, n_layers, hidden), got {type(X).__name__} "
                        f"({exc}).") from None
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3-D array (n_docs, n_layers, hidden), or 2-D (n_docs, hidden) for one "
                         f"layer, got shape {arr.shape}. Reshape your data: one document's features are "
                         "X[None]. Read them from a cache with open_cache(path).features('mean').")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no documents (shape {raw.shape}).")
    if arr.shape[1] * arr.shape[2] == 0:
        raise ValueError(f"{name}: 0 feature(s) (shape={raw.shape}) while a minimum of 1 is required.")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
        raise ValueError(f"{name}: NaN or inf features in {len(bad)} document(s), first rows {bad[:5].tolist()}. "
                         "Check the cache with `finetext verify`, or drop those rows.")
    if expected is not None and tuple(arr.shape[1:]) != tuple(expected):
        raise ValueError(f"{name} has {arr.shape[1] * arr.shape[2]} features, but {owner} is expecting "
                         f"{expected[0] * expected[1]} features as input: it was fitted on (n_layers, hidden) = "
                         f"{tuple(expected)}, got {tuple(arr.shape[1:])}. Use features from the same model (and "
                         "layer count) the head was trained on.")
    return arr


def check_labels(y: object, n_docs: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes, codes) of y: one label of any type per document, at least two classes. A column vector
    (n_docs, 1) is accepted with scikit-learn's DataConversionWarning."""
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None: give one label per document.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1 or len(y) != n_docs:
        raise ValueError(f"y: expected {n_docs} labels (one per row of X) as a 1-D array, got shape {y.shape}.")
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y: only one class ({np.asarray(classes).tolist()[0]!r}) in the training rows; a classifier "
                         "needs at least two. Draw a budget that covers every class (sample_budget).")
    return classes, codes


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
        raise ValueError(f"y: labels {unseen[:5]} were not among the training classes "
                         f"{np.asarray(classes).tolist()[:10]}. "
                         "Map them to the training label names (e.g. a label mapping for out-of-domain "
                         "evaluation), or drop those rows.")
    return y
