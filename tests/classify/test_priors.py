"""Selector priors against their definitions computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

import finetext.classify.logreg
import finetext.classify.priors
from finetext.classify.features import layer_stats, normalised
from finetext.classify.priors import clear_cv_memo, cv_loglik, cv_logliks, last_layer_loses, probe_prior
from tests.classify.test_heads import toy


@pytest.fixture(autouse=True)
def fresh_memo():
    """Every test computes its cross-validations itself (cv_logliks remembers sets across calls)."""
    clear_cv_memo()
    yield
    clear_cv_memo()


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


def test_cv_loglik_is_each_layers_cross_validated_log_likelihood():
    X, y = toy(n=48)
    codes = np.unique(y, return_inverse=True)[1]
    Z = normalised(X, "layer")
    folds = StratifiedKFold(4, shuffle=True, random_state=3)
    proba = [cross_val_predict(LogisticRegression(max_iter=500), Z[:, layer], codes, cv=folds, method="predict_proba")
             for layer in range(4)]  # out-of-fold, per layer
    expected = np.array([np.log(p[np.arange(48), codes] + 1e-9).sum() for p in proba])
    loglik = cv_loglik(Z, codes, seed=3)
    np.testing.assert_allclose(loglik / 48, expected / 48, atol=2e-3)  # both stop at a gradient of 1e-4
    assert loglik.argmax() == 2  # the informative layer
    # a batch of sets, normalised per set, is each set on its own; one row in a class: nothing to hold out
    sets = [np.arange(48), np.arange(24, 48), np.array([0, 1, 2, 3])]
    batched = cv_logliks(X, codes, sets, [3, 4, 5], "layer")
    np.testing.assert_allclose(batched[0], loglik, rtol=1e-5)
    np.testing.assert_allclose(batched[1], cv_loglik(normalised(X[24:], "layer"), codes[24:], seed=4), rtol=1e-5)
    assert batched[2] is None


def test_last_layer_loses_by_more_than_the_gap_per_row():
    X, y = toy(n=48)  # layer 2 carries the labels, the last layer is noise
    codes = np.unique(y, return_inverse=True)[1]
    Z = normalised(X, "layer")
    loglik = cv_loglik(Z, codes, seed=3)
    per_row = (loglik.max() - loglik[-1]) / 48
    assert per_row > 0.1 and last_layer_loses(loglik, 48)
    assert not last_layer_loses(loglik, 48, gap=per_row)  # not by more than its own gap
    Z[:, -1] = Z[:, 2]  # the last layer as good as the best: it does not lose
    assert not last_layer_loses(cv_loglik(Z, codes, seed=3), 48)
    assert not last_layer_loses(None, 3)  # nothing to hold out


def mixed_sets(n: int = 150) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    X, y = toy(n=n)
    codes = np.unique(y, return_inverse=True)[1]
    rng = np.random.default_rng(1)
    return X, codes, [np.sort(rng.choice(n, size, replace=False)) for size in (40, 60, 40, 90, 60, 24)]


def test_cv_logliks_in_small_chunks_are_the_same(monkeypatch):
    X, codes, sets = mixed_sets()
    together = cv_logliks(X, codes, sets, range(6), "standard")
    clear_cv_memo()
    monkeypatch.setattr(finetext.classify.priors, "CV_CHUNK_BYTES", 1)  # one set per chunk
    for a, b in zip(together, cv_logliks(X, codes, sets, range(6), "standard")):
        np.testing.assert_allclose(a, b, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("split", [False, True], ids=["folds-as-weights", "folds-as-copies"])
def test_cv_logliks_on_a_gpu_are_the_cpus_up_to_rounding(split, monkeypatch):
    monkeypatch.setattr(finetext.classify.logreg, "SPLIT_CLASSES", 0 if split else 10**6)  # both ways of batching folds
    X, codes, sets = mixed_sets()  # sets of several sizes: padded together on the GPU
    for cpu, gpu, rows in zip(cv_logliks(X, codes, sets, range(6), "layer"),  # two keys: the device type
                              cv_logliks(X, codes, sets, range(6), "layer", "cuda"), sets):
        np.testing.assert_allclose(cpu / len(rows), gpu / len(rows), atol=2e-3)
        assert last_layer_loses(cpu, len(rows)) == last_layer_loses(gpu, len(rows))


def test_cv_logliks_remembers_sets_by_content(monkeypatch):
    X, codes, sets = mixed_sets()
    runs, original = [], finetext.classify.priors.cross_validated

    def counted(Z, *args, **kwargs):  # records each run's number of regressions
        runs.append(len(Z))
        return original(Z, *args, **kwargs)

    monkeypatch.setattr(finetext.classify.priors, "cross_validated", counted)
    first = cv_logliks(X, codes, sets, range(6), "layer")
    computed = sum(runs)
    again = cv_logliks(X.copy(), codes, sets[::-1], range(5, -1, -1), "layer")[::-1]  # same content, new arrays
    assert sum(runs) == computed  # nothing computed again
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    X2 = X.copy()
    X2[sets[1][0], 0, 0] += 1.0  # one feature of one of set 1's rows changed
    for changed in (lambda: cv_logliks(X, codes, sets[:1], [7], "layer"),  # another seed: other folds
                    lambda: cv_logliks(X2, codes, sets[1:2], [1], "layer"),
                    lambda: cv_logliks(X, codes, sets[:1], [0], "standard")):  # another normalisation
        before = len(runs)
        changed()
        assert len(runs) == before + 1


def test_cv_logliks_from_many_threads_at_once(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    X, codes, sets = mixed_sets()
    alone = cv_logliks(X, codes, sets, range(6), "layer")
    clear_cv_memo()
    monkeypatch.setattr(finetext.classify.priors, "CV_MEMO_SETS", 2)  # sets leave the memo while others look them up
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda r: cv_logliks(X, codes, sets[r:] + sets[:r], [*range(6)][r:] + [*range(r)],
                                                  "layer"), [0, 1, 2, 3, 4, 5] * 2))
    for r, result in zip([0, 1, 2, 3, 4, 5] * 2, runs):
        for a, b in zip(alone[r:] + alone[:r], result):
            np.testing.assert_allclose(a, b, rtol=1e-4)
    assert len(finetext.classify.priors._memo) <= 2
