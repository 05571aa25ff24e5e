"""The baseline: logistic regression on one layer, as most people use embeddings today."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from finetext.classify.features import check_features, check_known_labels, check_labels
from finetext.classify.persist import SaveLoadMixin


class LastLayerLogReg(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Logistic regression on the features of one layer (default the last).

    X: (n_docs, n_layers, hidden), or (n_docs, hidden) as one layer; only X[:, layer] is used. C, max_iter and
    class_weight are scikit-learn's LogisticRegression's (lbfgs, multinomial); n_iter_ is its iteration count.
    """

    def __init__(self, *, layer: int = -1, C: float = 1.0, max_iter: int = 1000,
                 class_weight: str | Mapping | None = None, random_state: int | None = 0) -> None:
        self.layer = layer
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: object, y: object) -> "LastLayerLogReg":
        X = check_features(X)
        if not -X.shape[1] <= self.layer < X.shape[1]:
            raise ValueError(f"LastLayerLogReg: layer={self.layer} does not exist; X has layers 0..{X.shape[1] - 1}.")
        classes, codes = check_labels(y, len(X), type(self).__name__)
        # One BLAS thread: lbfgs on (n, hidden) features is too small to share out (bench/blas_threads.py).
        with threadpool_limits(1, user_api="blas"):
            self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight,
                                             random_state=self.random_state).fit(X[:, self.layer], classes[codes])
        self.classes_ = self.model_.classes_
        self.n_iter_ = self.model_.n_iter_
        self.n_layers_, self.hidden_size_ = int(X.shape[1]), int(X.shape[2])
        self.n_features_in_ = self.n_layers_ * self.hidden_size_
        return self

    def _layer(self, X: object) -> np.ndarray:
        check_is_fitted(self, "model_")
        return check_features(X, expected=(self.n_layers_, self.hidden_size_), owner=type(self).__name__)[:, self.layer]

    def predict_proba(self, X: object) -> np.ndarray:
        features = self._layer(X)  # checks that the head is fitted first
        return self.model_.predict_proba(features)

    def predict(self, X: object) -> np.ndarray:
        features = self._layer(X)
        return self.model_.predict(features)

    def predict_log_proba(self, X: object) -> np.ndarray:
        features = self._layer(X)
        return self.model_.predict_log_proba(features)

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        """Accuracy; labels never seen in training are refused rather than silently counted wrong."""
        check_is_fitted(self)
        return super().score(X, check_known_labels(self.classes_, y), sample_weight)

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"coef": self.model_.coef_, "intercept": self.model_.intercept_}, {}

    def import_state(self, classes: np.ndarray, n_layers: int, hidden: int, arrays: dict[str, np.ndarray],
                config: dict[str, Any]) -> None:
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
        self.model_.coef_, self.model_.intercept_ = arrays["coef"], arrays["intercept"]
        self.model_.classes_ = self.classes_ = classes
        self.model_.n_features_in_ = hidden
        self.n_layers_, self.hidden_size_ = n_layers, hidden
        self.n_features_in_ = n_layers * hidden

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True  # (n_docs, hidden): one layer
        tags.input_tags.three_d_array = True
        return tags

    def _more_tags(self) -> dict[str, Any]:
        return {"X_types": ["3darray", "2darray"]}
