"""RBF kernel features (kernel.py) against the kernel computed by hand, and heads that train on them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finetext.classify import LayerAttention, ScalarMix, fit_many, sample_budget
from finetext.classify.features import unit_length
from finetext.classify.kernel import apply_map, rbf_map
from tests.classify.test_heads import toy


def rbf_by_hand(A, B, gamma):
    """(a, L, H), (b, L, H), (L,) -> (L, a, b) exp(-γ_l |a_l - b_l|²), one pair at a time"""
    out = np.empty((A.shape[1], len(A), len(B)))
    for layer in range(A.shape[1]):
        for i, a in enumerate(A[:, layer]):
            for j, b in enumerate(B[:, layer]):
                out[layer, i, j] = np.exp(-gamma[layer] * np.sum((a - b) ** 2))
    return out


def test_features_reproduce_the_kernel_on_landmarks_and_approximate_it_elsewhere():
    rng = np.random.default_rng(0)
    U = unit_length(rng.normal(size=(60, 3, 5)).astype(np.float32))
    kernel_map = rbf_map(U, n_landmarks=40, seed=0)
    Z, gamma = kernel_map["map_landmarks"], kernel_map["map_gamma"]
    assert Z.shape == (40, 3, 5) and gamma.shape == (3,)
    # γ_l is one over the layer's total variance: γ·(mean squared distance over all pairs) = 2 on every layer
    d2 = ((U[:, None] - U[None]) ** 2).sum(-1).mean((0, 1))  # (L,)
    np.testing.assert_allclose(gamma * d2, 2.0, rtol=1e-4)
    phi = apply_map(Z, kernel_map)  # (m, L, m)
    gram = np.einsum("alm,blm->lab", phi, phi)
    np.testing.assert_allclose(gram, rbf_by_hand(Z, Z, gamma), atol=1e-4)  # exact on the landmarks
    rest = U[~np.isin(np.arange(60), [np.flatnonzero((U == z).all((1, 2)))[0] for z in Z])]
    phi_rest = apply_map(rest, kernel_map)
    approx = np.einsum("alm,blm->lab", phi_rest, phi_rest)
    assert np.abs(approx - rbf_by_hand(rest, rest, gamma)).mean() < 0.05  # 40 landmarks in 5 dimensions


def test_landmarks_are_seeded_training_rows_and_duplicates_are_harmless():
    rng = np.random.default_rng(1)
    U = unit_length(rng.normal(size=(30, 2, 4)).astype(np.float32))
    U[10:20] = U[0]  # ten copies of one row: a singular kernel matrix
    a, b = rbf_map(U, 25, seed=3), rbf_map(U, 25, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(rbf_map(U, 25, seed=4)["map_landmarks"], a["map_landmarks"])
    assert all(any((z == u).all() for u in U) for z in a["map_landmarks"])
    phi = apply_map(U, a)
    assert np.isfinite(phi).all() and np.abs(phi).max() < 10
    assert rbf_map(U, 500, seed=0)["map_landmarks"].shape[0] == 30  # never more landmarks than rows


def part_proba(head, X, part):
    """(n, C) one part's probabilities, the mean over its members."""
    with torch.no_grad():
        return head._module(part)(head._normalised(X, part)).softmax(-1).mean(1)[0].numpy()


@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_kernel_parts(Head, small_plans):
    X, y = toy(n=150)
    Xt, yt = toy(seed=3)
    few = Head(random_state=0).fit(X[:30], y[:30])  # few labels: the layers as they are
    assert few._parts() == ["linear"]
    small_plans(10, landmarks=50)
    before = X.copy()
    both = Head(random_state=0).fit(X, y)  # validated, on 50 landmarks or more: a linear and a kernel ensemble
    np.testing.assert_array_equal(X, before)  # features are normalised in place, but in the fit's own copy
    assert both._parts() == ["linear", "rbf"] and both.state_["rbf.map_landmarks"].shape == (50, 4, 8)
    # the kernel part alone is well above chance (1/3): ScalarMix's mix of RBF features scored 0.68, LayerAttention's 0.9+
    assert (part_proba(both, Xt, "rbf").argmax(1) == np.searchsorted(both.classes_, yt)).mean() > 0.6
    np.testing.assert_allclose(both.predict_proba(Xt), (part_proba(both, Xt, "linear") + part_proba(both, Xt, "rbf")) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(both.layer_weights_, both.layer_weights(X).mean(0), atol=1e-5)  # recorded at the fit


def test_validated_fits_train_both_parts_and_batched_equals_alone(small_plans):
    X, y = toy(n=300)
    small_plans(20, landmarks=40, max_epochs=60, patience=3)
    head = LayerAttention(n_members=2)
    row_sets = [sample_budget(y, per_class=40, random_state=s) for s in range(2)]
    batched = fit_many(head, X, y, row_sets, [0, 1])
    Xt, _ = toy(seed=5)
    for seed, (est, rows) in enumerate(zip(batched, row_sets)):
        assert est._parts() == ["linear", "rbf"]  # validated members on >= N_LANDMARKS rows
        alone = LayerAttention(**{**head.get_params(), "random_state": seed}).fit(X[rows], y[rows])
        np.testing.assert_array_equal(est.state_["rbf.map_landmarks"], alone.state_["rbf.map_landmarks"])
        np.testing.assert_allclose(est.predict_proba(Xt), alone.predict_proba(Xt), atol=2e-4)
    small_plans(20, landmarks=121)  # the kernel ensemble only with at least N_LANDMARKS rows (120 here)
    assert head.fit(X[row_sets[0]], y[row_sets[0]])._parts() == ["linear"]
