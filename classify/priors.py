"""Selector priors over layers, computed from the labelled rows before a head trains (see heads.py, layer_prior).

"probe": how well each layer alone separates the labelled rows (leave-one-out nearest centroid, no training);
"cv": each layer's cross-validated logistic-regression log-likelihood; "last": the last layer favoured. Each is
an (n_layers,) score added to the selector's attention logits, 0 for the favoured layers.
"""
from __future__ import annotations

import numpy as np

from classify.features import layer_stats

LAST_LAYER_PRIOR = 4.0  # prior score of the last layer in the last-layer-heavy candidate: α_last ≈ 0.9 of 7
PROBE_PRIOR = 2.0  # prior score of the worst single layer under layer_prior="probe" (the best gets 0)
CV_PRIOR_SCALE = 0.1  # layer_prior="cv": prior score per nat of a layer's cross-validated log-likelihood
CV_PRIOR_FLOOR = -20.0  # ... and the lowest score it gives a layer
LAST_LAYER_GAP = 0.01  # normalize="cv": nats per row by which another layer must beat the last one (see heads.py)


def probe_prior(X: np.ndarray, codes: np.ndarray, n_classes: int, strength: float = PROBE_PRIOR) -> np.ndarray:
    """(L,) selector prior from how well each layer alone separates the labelled rows.

    Leave-one-out nearest-centroid accuracy per layer (cosine on features standardised by these rows), scaled
    so that the best layer gets 0 and the worst -strength. Cheap (no training) and usable from 2 rows per class.
    X: (n, L, H), codes: (n,) class indices.
    """
    mean, std = layer_stats(X)
    Z = (X - mean) / std
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True) + 1e-8  # (n, L, H)
    n = len(codes)
    sums = np.stack([Z[codes == c].sum(0) for c in range(n_classes)], axis=-1)  # (L, H, C)
    counts = np.bincount(codes, minlength=n_classes).astype(np.float32)  # (C,)
    sims = np.einsum("nlh,lhc->nlc", Z, sums)  # (n, L, C)
    mine = np.arange(n)
    sims[mine, :, codes] -= (Z * Z).sum(-1)  # leave each row out of its own class's centroid
    others = np.broadcast_to(counts, (n, n_classes)).copy()  # (n, C)
    others[mine, codes] -= 1
    scores = np.where(others[:, None, :] > 0, sims / np.maximum(others, 1)[:, None, :], -np.inf)
    accuracy = (scores.argmax(-1) == codes[:, None]).mean(0)  # (L,)
    spread = max(float(accuracy.max() - accuracy.min()), 1e-3)
    return (strength * (accuracy - accuracy.max()) / spread).astype(np.float32)


def cv_loglik(Z: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray | None:
    """(L,) how well each layer alone predicts the labelled rows: the k-fold cross-validated log-likelihood,
    summed over rows, of a logistic regression on that layer. Z: (n, L, H) features normalised as the head sees
    them; codes: (n,) class indices; k = min(4, smallest class). None with one row in some class (nothing to
    hold out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    k = int(min(4, np.bincount(codes).min()))
    if k < 2:
        return None
    folds = StratifiedKFold(k, shuffle=True, random_state=seed)
    rows = np.arange(len(codes))
    with threadpool_limits(1, user_api="blas"):  # many small fits: one BLAS thread is faster (bench/blas_threads.py)
        return np.array([np.log(cross_val_predict(LogisticRegression(max_iter=500), Z[:, layer], codes, cv=folds,
                                                  method="predict_proba")[rows, codes] + 1e-9).sum()
                         for layer in range(Z.shape[1])])


def cv_prior(Z: np.ndarray, codes: np.ndarray, seed: int, scale: float = CV_PRIOR_SCALE) -> np.ndarray:
    """(L,) selector prior: each layer's cross-validated log-likelihood (cv_loglik) times `scale`, the best
    layer at 0; uniform (zeros) when a class has one row."""
    loglik = cv_loglik(Z, codes, seed)
    if loglik is None:
        return np.zeros(Z.shape[1], np.float32)
    # floored: a weight of e^-20 is already nothing, and far smaller ones turn into denormal floats in the
    # backward pass, which ran 40x slower (banking77, 32/class)
    return np.maximum(scale * (loglik - loglik.max()), CV_PRIOR_FLOOR).astype(np.float32)


def last_layer_loses(Z: np.ndarray, codes: np.ndarray, seed: int, gap: float = LAST_LAYER_GAP) -> bool:
    """Whether some layer predicts the labelled rows better than the last one, by more than `gap` nats of
    cross-validated log-likelihood per row (cv_loglik). False when a class has one row."""
    loglik = cv_loglik(Z, codes, seed)
    return loglik is not None and bool((loglik.max() - loglik[-1]) / len(codes) > gap)
