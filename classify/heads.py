"""Heads over all layers as scikit-learn estimators: ScalarMix and LayerAttention.

Both take X of shape (n_docs, n_layers, hidden) and train an ensemble of `n_members` small PyTorch heads
in one vectorised pass (see stack.py). With enough labels each member early-stops on its own stratified
fold of the training rows, so together they use every row; with few labels they train a fixed number of
epochs. Predictions average the members' probabilities.
"""
from __future__ import annotations

from dataclasses import asdict
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from classify.features import check_features, layer_stats
from classify.stack import LayerAttentionStack, ScalarMixStack, TrainConfig, logits_of, train_stack

MAX_STACK_BYTES = 1 << 30  # features gathered for one stack of heads; larger jobs are split


def _fold_of(rows_y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold id per row: each class's rows shuffled (seeded) then dealt round-robin."""
    folds = np.empty(len(rows_y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(rows_y):
        members = np.flatnonzero(rows_y == c)
        folds[members[rng.permutation(len(members))]] = np.arange(len(members)) % n_folds
    return folds


class _StackHead(ClassifierMixin, BaseEstimator):
    """Shared machinery of the vectorised heads. Subclasses set `_stack` and their defaults."""

    _stack: type[ScalarMixStack] = ScalarMixStack
    _parameter_constraints: dict[str, Any] = {}

    def __init__(self, *, n_members: int = 5, normalize: str = "standard", lr: float = 1e-2,
                 weight_decay: float = 1e-3, dropout: float = 0.1, max_epochs: int = 200, patience: int = 20,
                 validation: str = "auto", min_val_per_class: int = 8, epochs_without_validation: int = 100,
                 class_weight: str | None = None, random_state: int | None = 0) -> None:
        self.n_members = n_members
        self.normalize = normalize
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation = validation
        self.min_val_per_class = min_val_per_class
        self.epochs_without_validation = epochs_without_validation
        self.class_weight = class_weight
        self.random_state = random_state

    # --- checking ---------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        choices = {"normalize": ("standard", "none"), "validation": ("auto", "none"),
                   "class_weight": (None, "balanced")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{type(self).__name__}: {name} must be one of {allowed}, got {getattr(self, name)!r}.")
        positive = {"n_members": Integral, "max_epochs": Integral, "patience": Integral, "min_val_per_class": Integral,
                    "epochs_without_validation": Integral, "lr": Real}
        for name, kind in positive.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive number, got {value!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}: dropout must lie in [0, 1), got {self.dropout!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {self.weight_decay!r}.")

    def _check_y(self, X: np.ndarray, y: object) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y: expected {len(X)} labels (one per row of X) as a 1-D array, got shape {y.shape}.")
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y: only one class ({classes[0]!r}) in the training rows; a classifier needs at "
                             "least two. Draw a budget that covers every class (sample_budget).")
        return classes, codes

    # --- training ---------------------------------------------------------------------------------------

    def _config(self, epochs: int) -> TrainConfig:
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, dropout=self.dropout,
                           max_epochs=epochs, patience=self.patience)

    def _fit_sets(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                  seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Train n_members heads for each row set, as few stacks as memory allows. One state per set."""
        L, H = X.shape[1:]
        M = self.n_members
        n_max = max(len(r) for r in row_sets)
        per_set = M * n_max * L * H * 4
        step = max(1, MAX_STACK_BYTES // max(per_set, 1))
        states: list[dict[str, np.ndarray]] = []
        for start in range(0, len(row_sets), step):
            states += self._fit_stack(X, codes, n_classes, row_sets[start:start + step], seeds[start:start + step])
        return states

    def _fit_stack(self, X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
                   seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
        L, H = X.shape[1:]
        M = self.n_members
        use_val = self.validation == "auto" and M > 1 and all(
            np.bincount(codes[r], minlength=n_classes)[np.unique(codes[r])].min() >= self.min_val_per_class
            for r in row_sets)
        n_max = max(len(r) for r in row_sets)
        G = len(row_sets) * M
        idx = np.zeros((G, n_max), dtype=np.int64)
        w_train = np.zeros((G, n_max), dtype=np.float32)
        w_val = np.zeros((G, n_max), dtype=np.float32)
        for s, (rows, seed) in enumerate(zip(row_sets, seeds)):
            folds = _fold_of(codes[rows], M, seed) if use_val else None
            counts = np.bincount(codes[rows], minlength=n_classes).astype(np.float32)
            balance = (len(rows) / (n_classes * np.maximum(counts, 1)))[codes[rows]] \
                if self.class_weight == "balanced" else np.ones(len(rows), np.float32)
            for m in range(M):
                g = s * M + m
                idx[g, :len(rows)] = rows
                if use_val:
                    w_train[g, :len(rows)] = balance * (folds != m)
                    w_val[g, :len(rows)] = folds == m
                else:
                    w_train[g, :len(rows)] = balance
        mean = np.empty((G, L, H), np.float32)
        std = np.empty((G, L, H), np.float32)
        for g in range(G):
            if self.normalize == "standard":
                keep = w_train[g] > 0
                mean[g], std[g] = layer_stats(X[idx[g][keep]])
            else:
                mean[g], std[g] = 0.0, 1.0
        x = torch.from_numpy((X[idx] - mean[:, None]) / std[:, None])  # (G, n_max, L, H)
        y = torch.from_numpy(codes[idx])  # (G, n_max)
        gen = torch.Generator().manual_seed(int(seeds[0]) * 7919 + len(row_sets))
        module = self._stack(G, L, H, n_classes, gen)
        epochs = self.max_epochs if use_val else self.epochs_without_validation
        best_epoch = train_stack(module, x, y, torch.from_numpy(w_train), torch.from_numpy(w_val) if use_val else None,
                                 self._config(epochs), gen)
        params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        states = []
        for s in range(len(row_sets)):
            sl = slice(s * M, (s + 1) * M)
            state = {k: v[sl].copy() for k, v in params.items()}
            state.update(mean=mean[sl], std=std[sl], best_epoch=best_epoch[sl].astype(np.int64))
            states.append(state)
        return states

    def fit(self, X: object, y: object) -> "_StackHead":
        """Fit on X (n_docs, n_layers, hidden) and labels y of any type. Returns self."""
        self._check_params()
        X = check_features(X)
        classes, codes = self._check_y(X, y)
        seed = 0 if self.random_state is None else int(self.random_state)
        state = self._fit_sets(X, codes, len(classes), [np.arange(len(X))], [seed])[0]
        self._set_fitted(classes, X, state)
        return self

    def _set_fitted(self, classes: np.ndarray, X: np.ndarray, state: dict[str, np.ndarray]) -> None:
        self.classes_ = classes
        self.n_features_in_ = int(X.shape[1] * X.shape[2])
        self.n_layers_, self.hidden_size_ = int(X.shape[1]), int(X.shape[2])
        self.state_ = state
        self.layer_weights_ = self.layer_weights(X).mean(axis=0)  # (n_layers,)

    # --- prediction -------------------------------------------------------------------------------------

    def _module(self) -> ScalarMixStack:
        M = self.state_["mean"].shape[0]
        module = self._stack(M, self.n_layers_, self.hidden_size_, len(self.classes_), torch.Generator())
        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.state_.items()
                                if k not in ("mean", "std", "best_epoch")})
        return module.eval()

    def _members_x(self, X: np.ndarray) -> torch.Tensor:
        """(M, n, L, H) features normalised by each member's statistics."""
        return torch.from_numpy((X[None] - self.state_["mean"][:, None]) / self.state_["std"][:, None])

    def _checked(self, X: object) -> np.ndarray:
        check_is_fitted(self, "state_")
        return check_features(X, expected=(self.n_layers_, self.hidden_size_))

    @torch.no_grad()
    def predict_proba(self, X: object) -> np.ndarray:
        """(n_docs, n_classes) probabilities, the mean over ensemble members; columns follow classes_."""
        X = self._checked(X)
        module = self._module()
        out = []
        for start in range(0, len(X), 2048):
            logits = logits_of(module, self._members_x(X[start:start + 2048]))  # (M, n, C)
            out.append(logits.softmax(-1).mean(0).numpy())
        return np.concatenate(out)

    def predict(self, X: object) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @torch.no_grad()
    def layer_weights(self, X: object) -> np.ndarray:
        """(n_docs, n_layers) weight each document puts on each layer, averaged over members."""
        X = check_features(X, expected=(self.n_layers_, self.hidden_size_)) if hasattr(self, "n_layers_") \
            else check_features(X)
        module = self._module()
        out = [module.layer_weights(self._members_x(X[s:s + 2048])).mean(0).numpy()
               for s in range(0, len(X), 2048)]
        return np.concatenate(out)

    def _more_tags(self) -> dict[str, Any]:  # older scikit-learn
        return {"X_types": ["3darray"]}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags


class ScalarMix(_StackHead):
    """ELMo's scalar mix γ·Σ softmax(w)ₗ·hₗ over all layers (w starts uniform), then a linear classifier.

    X: (n_docs, n_layers, hidden). Each layer is standardised per dimension on the training rows
    (normalize="standard"). `layer_weights_` holds the learned softmax(w), averaged over members.
    """

    _stack = ScalarMixStack


class LayerAttention(_StackHead):
    """The FineText selector: per-document attention over layers, computed from the layers' own vectors.

    X: (n_docs, n_layers, hidden). For document d, s_l = x_l·u_l/√H + p_l, α = softmax_l(s), and the
    classifier sees Σ_l α_l x_l. It starts as a uniform mix (u = 0, p = 0) and learns which layers matter,
    per document. `layer_weights(X)` gives (n_docs, n_layers); `layer_weights_` their mean on the training rows.
    """

    _stack = LayerAttentionStack
