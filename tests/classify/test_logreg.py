"""Batched logistic regressions against scikit-learn's, solved to the optimum both ways."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

import finetext.classify.logreg
from finetext.classify.logreg import cross_validated, fit_logregs


def data(n: int = 30, H: int = 8, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % n_classes
    X = rng.normal(size=(n, H)) + 1.5 * np.eye(n_classes, H)[codes]  # separable-ish: the penalty matters
    return X, codes


def probabilities(X: np.ndarray, theta: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(n, len(classes)) one regression's probabilities over the classes it was trained on."""
    return torch.softmax((torch.from_numpy(X) @ theta[:-1] + theta[-1])[:, classes], -1).numpy()


def test_each_problem_is_scikit_learns_logistic_regression_on_its_rows():
    X, codes = data()
    train = np.ones((1, 3, 30))
    train[0, 1, :10] = 0  # problem 1 leaves out the first ten rows
    train[0, 2, codes == 2] = 0  # problem 2 never sees class 2: a binary regression, as scikit-learn fits it
    theta = fit_logregs(torch.from_numpy(X)[None], torch.from_numpy(codes)[None], torch.from_numpy(train), 3,
                        C=0.5, tol=1e-9)[0]  # (F, H + 1, C)
    for f in range(3):
        rows = train[0, f] > 0
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X[rows], codes[rows])
        np.testing.assert_allclose(probabilities(X, theta[f], list(ref.classes_)), ref.predict_proba(X), atol=1e-6)


def test_a_problem_without_training_rows_stays_at_zero():
    X, codes = data()
    train = np.zeros((1, 2, 30))
    train[0, 0] = 1
    theta = fit_logregs(torch.from_numpy(X)[None], torch.from_numpy(codes)[None], torch.from_numpy(train), 3)
    assert theta[0, 0].abs().max() > 0.1 and theta[0, 1].abs().max() == 0


@pytest.mark.parametrize("split", [False, True], ids=["folds-as-weights", "folds-as-copies"])
def test_cross_validated_log_likelihood_is_scikit_learns_out_of_fold_one(split, monkeypatch):
    monkeypatch.setattr(finetext.classify.logreg, "SPLIT_CLASSES", 0 if split else 10**6)  # both ways of batching folds
    groups = [data(seed=s) for s in range(2)] + [data(n_classes=2, seed=2)]
    folds = np.stack([np.repeat(np.arange(3), 10), np.arange(30) // 3 % 3, np.repeat(np.arange(2), 15)])
    folds[2, -4:] = -1  # padding rows: in no problem
    ours = cross_validated(torch.from_numpy(np.stack([X for X, _ in groups])),
                           torch.from_numpy(np.stack([c for _, c in groups])), torch.from_numpy(folds), 3, tol=1e-9)
    for (X, codes), fold, got in zip(groups, folds, ours.numpy()):
        keep = fold >= 0
        X, codes, fold = X[keep], codes[keep], fold[keep]
        k = fold.max() + 1
        proba = cross_val_predict(LogisticRegression(tol=1e-10, max_iter=10_000), X, codes, method="predict_proba",
                                  cv=[(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)])
        assert abs(got - np.log(proba[np.arange(len(codes)), codes] + 1e-9).sum()) < 1e-5


def test_float32_stops_where_scikit_learn_does():
    """The default dtype and tolerance (scikit-learn's): out-of-fold log-likelihoods within 2e-3 nats per row."""
    X, codes = data(n=48, H=64, n_classes=4, seed=5)
    folds = np.empty(48, np.int64)
    for f, (_, held) in enumerate(StratifiedKFold(4, shuffle=True, random_state=0).split(X, codes)):
        folds[held] = f
    ours = cross_validated(torch.from_numpy(X).float()[None], torch.from_numpy(codes)[None],
                           torch.from_numpy(folds)[None], 4)
    proba = cross_val_predict(LogisticRegression(max_iter=500), X, codes, method="predict_proba",
                              cv=StratifiedKFold(4, shuffle=True, random_state=0))
    assert abs(float(ours[0]) - np.log(proba[np.arange(48), codes] + 1e-9).sum()) / 48 < 2e-3
