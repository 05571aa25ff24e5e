"""A prior from the unlabelled pool: each layer's features reshaped by the covariance of every cached document.

A label budget study caches the whole corpus and labels a few rows of it; the other rows still say which
directions the corpus's documents vary along. PoolPrior turns that into a Gaussian prior on a linear
classifier's weights, w ~ N(0, Σᵖ) per layer (Σ the pool's covariance): training with an ordinary L2 penalty on

    z = (x - μ) · V diag(c·λ^(p/2)) Vᵀ          (Σ = V diag(λ) Vᵀ, per layer)

is training on x with the penalty wᵀ Σ⁻ᵖ w / c², so weights along directions the pool varies in are cheap and
along directions it barely varies in are dear. c keeps the mean squared norm of the centred features, so a
classifier's C means what it meant before; power=0 only centres. Measured (README, docs/experiments.md): at
4-8 labels per class it lifts logistic regression on the last layer by 5-6 points on TREC-6, 3-5 on BBC News and
1-2 on SST-2 (2-3 from 16 up), and costs 1-2.5 points on tasks of many fine classes (banking77; TREC-50 from 16
per class), whose distinctions live in the directions it shrinks; the attention heads lose with it. It is an
option, not a default: `finetext sweep --pool-prior auto` gives it to logistic regression where it
cross-validates better (prior_helps), and a sweep beside one without it shows what it does to a dataset.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from finetext.classify.features import check_features

CHUNK_ROWS = 4096  # rows per step of the covariance and the transform: bounded temporaries on any pool


def prior_helps(X: np.ndarray, Z: np.ndarray, y: np.ndarray, row_sets: Sequence[np.ndarray], seeds: Sequence[int],
                layer: int = -1, device: str = "cpu") -> list[bool]:
    """Per row set, whether logistic regression on `layer` predicts the set's labelled rows better from Z, the
    pool prior's features, than from X, the raw ones: k-fold cross-validated log-likelihoods of both
    (priors.cv_logliks, on the two as a stack of two layers). False where a class has one row (nothing to hold
    out). Measured (docs/experiments.md): it takes the prior on BBC News always, on TREC-6 at 4-8 labels per class,
    on SST-2 in about 2 sets of 3, and on TREC-50 and banking77 from 16 per class never, where the prior costs
    1-2.5 points; it misses banking77 at 4 per class (the prior's held-out log-likelihood is higher, its accuracy
    lower)."""
    from finetext.classify.priors import cv_logliks

    pair = np.stack([X[:, layer], Z[:, layer]], axis=1)  # (n, 2, H)
    codes = np.unique(np.asarray(y), return_inverse=True)[1]
    return [ll is not None and bool(ll[1] > ll[0]) for ll in cv_logliks(pair, codes, row_sets, seeds, device=device)]


class PoolPrior(TransformerMixin, BaseEstimator):
    """Per-layer covariance shaping fitted on unlabelled features; labels are never read.

    fit(X): X (n_docs, n_layers, hidden), or (n_docs, hidden) for one layer — every document the classifier
    may later be trained on, labelled or not (in a sweep: the whole training cache). transform(X): the same
    shape, float32. power ≥ 0: 1 is the pool's covariance itself; larger leans harder on its top directions.
    Fitted: mean_ (n_layers, hidden), matrix_ (n_layers, hidden, hidden), the symmetric map per layer.
    """

    def __init__(self, *, power: float = 1.0) -> None:
        self.power = power

    def fit(self, X: object, y: object = None) -> "PoolPrior":
        if not (isinstance(self.power, (int, float)) and 0 <= self.power < np.inf):
            raise ValueError(f"PoolPrior: power must be a number >= 0 (1: the pool's covariance), got {self.power!r}.")
        X = check_features(X, name="X (the unlabelled pool)", owner=type(self).__name__)
        n, L, H = X.shape
        if n < 2:
            raise ValueError(f"PoolPrior: a covariance needs at least 2 documents in the pool, got n_samples={n}. "
                             "Fit it on every cached training document, labelled or not.")
        total = np.zeros((L, H))
        gram = np.zeros((L, H, H))
        for start in range(0, n, CHUNK_ROWS):
            chunk = X[start:start + CHUNK_ROWS].astype(np.float64).transpose(1, 0, 2)  # (L, rows, H)
            total += chunk.sum(axis=1)
            gram += chunk.transpose(0, 2, 1) @ chunk
        mean = total / n  # (L, H)
        cov = (gram - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)  # (L, H, H)
        lam, vec = np.linalg.eigh(cov)  # (L, H), (L, H, H)
        lam = np.clip(lam, 0.0, None)
        scale = lam ** (self.power / 2)  # 0 ** 0 == 1: power 0 is the identity
        kept = (lam * scale ** 2).sum(axis=1, keepdims=True)  # (L, 1)
        scale *= np.sqrt(np.divide(lam.sum(axis=1, keepdims=True), kept, out=np.ones_like(kept), where=kept > 0))
        self.mean_ = mean.astype(np.float32)
        self.matrix_ = ((vec * scale[:, None, :]) @ vec.transpose(0, 2, 1)).astype(np.float32)
        self.n_layers_, self.hidden_size_ = L, H
        self.n_features_in_ = L * H
        return self

    def transform(self, X: object) -> np.ndarray:
        check_is_fitted(self, "matrix_")
        if not (isinstance(X, np.ndarray) or sp.issparse(X)):
            X = np.asarray(X)
        two_d = X.ndim == 2
        X = check_features(X, expected=(self.n_layers_, self.hidden_size_), owner=type(self).__name__)
        out = np.empty(X.shape, np.float32)
        for start in range(0, len(X), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            centred = (X[rows] - self.mean_).transpose(1, 0, 2)  # (L, rows, H)
            out[rows] = (centred @ self.matrix_).transpose(1, 0, 2)  # the map is symmetric
        return out[:, 0] if two_d else out

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted map as named arrays, to be saved beside a head (safetensors: nothing that runs code)."""
        check_is_fitted(self, "matrix_")
        return {"mean": self.mean_, "matrix": self.matrix_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], power: float) -> "PoolPrior":
        """A fitted PoolPrior again, from arrays() and its power."""
        prior = cls(power=power)
        prior.mean_ = np.asarray(arrays["mean"], np.float32)  # (L, H)
        prior.matrix_ = np.asarray(arrays["matrix"], np.float32)  # (L, H, H)
        prior.n_layers_, prior.hidden_size_ = prior.mean_.shape
        prior.n_features_in_ = prior.n_layers_ * prior.hidden_size_
        return prior

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # (n_docs, n_layers, hidden); 2-D is one layer
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]  # features come out float32, as heads read them
        return tags
