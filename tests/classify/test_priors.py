"""Selector priors against their definitions computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from classify.features import layer_stats, normalised
from classify.priors import cv_loglik, cv_prior, last_layer_loses, probe_prior
from tests.classify.test_heads import toy


def test_probe_prior_is_leave_one_out_nearest_centroid_accuracy_per_layer():
    X, y = toy(n=40)
    codes = np.unique(y, return_inverse=True)[1]
    prior = probe_prior(X, codes, 3)
    # by hand: standardise, unit-normalise, leave each row out of its class centroid, nearest by mean cosine
    mean, std = layer_stats(X)
    Z = (X - mean) / std
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True)
    accuracy = []
    for layer in range(X.shape[1]):
        hits = 0
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            sims = [Z[keep & (codes == c), layer].sum(0) @ Z[i, layer] / (keep & (codes == c)).sum() for c in range(3)]
            hits += int(np.argmax(sims) == codes[i])
        accuracy.append(hits / len(X))
    accuracy = np.array(accuracy)
    np.testing.assert_allclose(prior, 2.0 * (accuracy - accuracy.max()) / (accuracy.max() - accuracy.min()), atol=1e-5)
    assert prior.argmax() == 2 and prior.min() == pytest.approx(-2.0)  # layer 2 carries the labels


def test_cv_prior_is_each_layers_cross_validated_log_likelihood():
    X, y = toy(n=48)
    codes = np.unique(y, return_inverse=True)[1]
    Z = normalised(X, "layer")
    prior = cv_prior(Z, codes, seed=3)
    folds = StratifiedKFold(4, shuffle=True, random_state=3)
    proba = [cross_val_predict(LogisticRegression(max_iter=500), Z[:, layer], codes, cv=folds, method="predict_proba")
             for layer in range(4)]  # out-of-fold, per layer
    loglik = [np.log(p[np.arange(48), codes] + 1e-9).sum() for p in proba]
    np.testing.assert_allclose(prior, 0.1 * (np.array(loglik) - max(loglik)), rtol=1e-4, atol=1e-4)
    assert prior.argmax() == 2 and prior.max() == 0  # the informative layer, at 0
    assert cv_prior(Z, codes, seed=3, scale=100.0).min() == -20.0  # floored: no denormal weights in training
    one_per_class = cv_prior(Z[:3], np.array([0, 1, 2]), seed=0)  # nothing to hold out: uniform
    assert np.array_equal(one_per_class, np.zeros(4, np.float32))


def test_last_layer_loses_by_more_than_the_gap_per_row():
    X, y = toy(n=48)  # layer 2 carries the labels, the last layer is noise
    codes = np.unique(y, return_inverse=True)[1]
    Z = normalised(X, "layer")
    loglik = cv_loglik(Z, codes, seed=3)
    per_row = (loglik.max() - loglik[-1]) / 48
    assert per_row > 0.1 and last_layer_loses(Z, codes, seed=3)
    assert not last_layer_loses(Z, codes, seed=3, gap=per_row)  # not by more than its own gap
    Z[:, -1] = Z[:, 2]  # the last layer as good as the best: it does not lose
    assert not last_layer_loses(Z, codes, seed=3)
    assert not last_layer_loses(Z[:3], np.array([0, 1, 2]), seed=0)  # nothing to hold out
