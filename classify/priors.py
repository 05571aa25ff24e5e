"""What the labelled rows say about each layer before a head trains.

cv_logliks: each layer's cross-validated logistic-regression log-likelihood on a row set's labelled rows, which
decides a set's normalisation when it has few labels (plan.py, last_layer_loses). probe_prior: how well each layer
alone separates the labelled rows (leave-one-out nearest centroid, no training), the shared selector's prior in
multitask.py.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from finetext.classify.features import layer_stats, normalised
from finetext.classify.logreg import HISTORY, SPLIT_CLASSES, cross_validated

PROBE_PRIOR = 2.0  # probe_prior's score of the worst single layer (the best gets 0)
LAST_LAYER_GAP = 0.01  # nats per row by which another layer must beat the last one (last_layer_loses)
CV_CHUNK_BYTES = 64 << 20  # cv_logliks's working memory per chunk of row sets, on a CPU ...
CV_CHUNK_BYTES_GPU = 2 << 30  # ... and on a GPU
# cv_logliks remembers each set's result by its content, so the heads of a sweep (scalar-mix and layer-attention
# on the same rows and seeds) cross-validate each set once: the most recent CV_MEMO_SETS sets, (L,) floats each
_memo: OrderedDict[bytes, np.ndarray] = OrderedDict()
_memo_lock = threading.Lock()  # heads may fit in threads (joblib's threading backend)
CV_MEMO_SETS = 4096


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


def cv_folds(codes: np.ndarray) -> int:
    """k of a k-fold cross-validation on labelled rows of these class indices: min(4, their smallest class)."""
    return int(min(4, np.bincount(codes)[np.unique(codes)].min()))


def cv_logliks(X: np.ndarray, codes: np.ndarray, row_sets: Sequence[np.ndarray], seeds: Sequence[int],
               normalization: str | None = None, device: str | torch.device = "cpu") -> list[np.ndarray | None]:
    """Per row set, (L,) how well each layer alone predicts its labelled rows: the k-fold cross-validated
    log-likelihood, summed over rows, of a logistic regression on that layer (k = min(4, smallest class), folds
    stratified and shuffled by the set's seed, as scikit-learn's StratifiedKFold); None with one row in some class
    (nothing to hold out). X: (n_docs, L, H); codes: (n_docs,) class indices; each set's features are X[rows],
    normalised by its own rows (features.normalised) when `normalization` is given.

    Every set's, layer's and fold's regression trains at once on `device` (logreg.py), in chunks of about
    CV_CHUNK_BYTES of sets of one size (on a GPU, of any sizes, padded to the chunk's largest). A set whose
    features, labels, seed, normalisation and device type were seen recently is not computed again (_memo).
    """
    from sklearn.model_selection import StratifiedKFold

    L, H = X.shape[1:]
    device = torch.device(device)
    pad = device.type != "cpu"  # as the heads' stacks: a CPU is bound by the rows it reads, a GPU by launches
    limit = CV_CHUNK_BYTES_GPU if pad else CV_CHUNK_BYTES
    out: list[np.ndarray | None] = [None] * len(row_sets)
    todo = []  # (set, its compact class indices, its folds, its _memo key)
    for i, (rows, seed) in enumerate(zip(row_sets, seeds)):
        compact = np.unique(codes[rows], return_inverse=True)[1]
        k = cv_folds(compact)
        if k < 2:
            continue
        key = _memo_key(X, rows, compact, seed, normalization, device)
        with _memo_lock:
            if key in _memo:
                _memo.move_to_end(key)
                out[i] = _memo[key].copy()
                continue
        folds = np.empty(len(rows), np.int64)
        for f, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, compact)):
            folds[held] = f
        todo.append((i, compact, folds, key))
    todo.sort(key=lambda t: len(row_sets[t[0]]))
    while todo:
        chunk = [todo.pop()]  # the largest left, then smaller sets while they fit
        n, C = len(chunk[0][1]), int(chunk[0][1].max()) + 1
        while todo and (pad or len(todo[-1][1]) == n) \
                and (len(chunk) + 1) * _cv_bytes(n, L, H, max(C, int(todo[-1][1].max()) + 1)) <= limit:
            chunk.append(todo.pop())
            C = max(C, int(chunk[-1][1].max()) + 1)
        Z = np.zeros((len(chunk), L, n, H), np.float32)  # sets padded to the chunk's largest
        y = np.zeros((len(chunk), n), np.int64)
        folds = np.full((len(chunk), n), -1, np.int64)
        for s, (i, compact, fold, _) in enumerate(chunk):
            rows = row_sets[i]
            features = X[rows] if normalization is None else normalised(X[rows], normalization)  # (n_s, L, H)
            Z[s, :, :len(rows)] = features.transpose(1, 0, 2)
            y[s, :len(rows)], folds[s, :len(rows)] = compact, fold
        loglik = cross_validated(torch.from_numpy(Z).flatten(0, 1).to(device),
                                 torch.from_numpy(y).repeat_interleave(L, 0).to(device),
                                 torch.from_numpy(folds).repeat_interleave(L, 0).to(device), C)
        for (i, _, _, key), row in zip(chunk, loglik.reshape(len(chunk), L).cpu().double().numpy()):
            out[i] = row
            with _memo_lock:
                _memo[key] = row.copy()
                while len(_memo) > CV_MEMO_SETS:
                    _memo.popitem(last=False)
    return out


def clear_cv_memo() -> None:
    """Forget every set cv_logliks remembers (for timings that must compute their own)."""
    with _memo_lock:
        _memo.clear()


def _memo_key(X: np.ndarray, rows: np.ndarray, compact: np.ndarray, seed: int, normalization: str | None,
              device: torch.device) -> bytes:
    """What decides a set's cv_logliks: its rows' features and class indices, the seed, the normalisation and
    the device type (a GPU rounds differently), as a blake2b digest (the features of 384 rows: ~4 ms)."""
    h = hashlib.blake2b(np.ascontiguousarray(X[rows], dtype=np.float32))
    h.update(np.ascontiguousarray(compact, dtype=np.int64))
    h.update(repr((X.shape[1:], int(seed), normalization, device.type)).encode())
    return h.digest()


def _cv_bytes(n: int, L: int, H: int, C: int) -> int:
    """Memory of one set's cross-validation in logreg.py, roughly: its features (and with many classes each
    fold's copy of its rows), the (fold, row, class) arrays of a step, and L-BFGS's history and iterates of
    (fold, feature, class)."""
    features = n * H * (4 if C >= SPLIT_CLASSES else 1)
    return 4 * L * (features + 6 * 4 * n * C + (2 * HISTORY + 8) * 4 * (H + 1) * C)


def cv_loglik(Z: np.ndarray, codes: np.ndarray, seed: int, device: str | torch.device = "cpu") -> np.ndarray | None:
    """(L,) cv_logliks of one set: all of Z's rows (n, L, H), as they are; codes (n,) class indices."""
    return cv_logliks(Z, codes, [np.arange(len(codes))], [seed], device=device)[0]


def last_layer_loses(loglik: np.ndarray | None, n_rows: int, gap: float = LAST_LAYER_GAP) -> bool:
    """Whether, by a set's cv_logliks over its n_rows labelled rows, some layer predicts them better than the
    last one by more than `gap` nats per row. False for None (a class with one row)."""
    return loglik is not None and bool((loglik.max() - loglik[-1]) / n_rows > gap)
