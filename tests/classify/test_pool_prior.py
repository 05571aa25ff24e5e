"""PoolPrior against a hand computation, the weight prior it stands for, and scikit-learn's transformer checks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import finetext.classify.pool_prior as pool_prior
from finetext.classify import PoolPrior, sample_budget
from finetext.classify.pool_prior import prior_helps


def pool(n: int = 60, L: int = 2, H: int = 5, seed: int = 0) -> np.ndarray:
    """(n, L, H) features with a different, strongly anisotropic covariance per layer and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(L, H, H)) * np.geomspace(3.0, 0.1, H)[None, :, None]
    X = np.einsum("nlh,lhk->nlk", rng.normal(size=(n, L, H)), mix)  # (n, L, H)
    return (X + rng.normal(size=(L, H))).astype(np.float32)


def test_power_one_is_the_covariance_square_root_scaled_to_keep_the_mean_squared_norm():
    X = pool()
    prior = PoolPrior().fit(X)
    for layer in range(X.shape[1]):
        cov = np.cov(X[:, layer].astype(np.float64), rowvar=False)
        expected = np.real(sqrtm(cov)) * np.sqrt(np.trace(cov) / np.trace(cov @ cov))
        np.testing.assert_allclose(prior.matrix_[layer], expected, rtol=1e-4, atol=1e-6)
    Z = prior.transform(X)
    centred = X - X.mean(axis=0)
    np.testing.assert_allclose((Z ** 2).sum(-1).mean(0), (centred ** 2).sum(-1).mean(0), rtol=1e-4)
    np.testing.assert_allclose(Z[:, 1], centred[:, 1] @ prior.matrix_[1], rtol=1e-4, atol=1e-5)


def test_power_zero_only_centres_and_larger_powers_lean_on_the_top_direction():
    X = pool()
    np.testing.assert_allclose(PoolPrior(power=0).fit_transform(X), X - X.mean(axis=0), atol=1e-5)
    top = np.linalg.eigh(np.cov(X[:, 0], rowvar=False))[1][:, -1]
    share = [float(((PoolPrior(power=p).fit_transform(X)[:, 0] @ top) ** 2).sum()
                   / (PoolPrior(power=p).fit_transform(X)[:, 0] ** 2).sum()) for p in (0, 1, 2)]
    assert share[0] < share[1] < share[2] < 1


def test_ridge_on_the_mapped_features_is_ridge_on_the_features_with_the_prior_penalty():
    """The docstring's claim: an L2 penalty on z = (x - μ)M is the penalty wᵀ M⁻² w on x - μ."""
    X = pool(n=80, L=1, H=6)[:, 0].astype(np.float64)
    y = np.random.default_rng(1).normal(size=80)
    M = PoolPrior().fit(X).matrix_[0].astype(np.float64)
    Xc, yc, alpha = X - X.mean(0), y - y.mean(), 3.0
    w_mapped = np.linalg.solve(M @ Xc.T @ Xc @ M + alpha * np.eye(6), M @ Xc.T @ yc)
    w_prior = np.linalg.solve(Xc.T @ Xc + alpha * np.linalg.inv(M @ M), Xc.T @ yc)
    np.testing.assert_allclose(M @ w_mapped, w_prior, rtol=1e-6)


def test_chunks_give_the_same_map_and_features(monkeypatch):
    X = pool(n=50)
    whole = PoolPrior().fit(X)
    monkeypatch.setattr(pool_prior, "CHUNK_ROWS", 7)
    chunked = PoolPrior().fit(X)
    np.testing.assert_allclose(chunked.matrix_, whole.matrix_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.transform(X), whole.transform(X), rtol=1e-5, atol=1e-5)


def test_two_d_features_are_one_layer():
    X = pool(L=1)
    np.testing.assert_allclose(PoolPrior().fit(X[:, 0]).transform(X[:, 0]), PoolPrior().fit_transform(X)[:, 0])
    assert PoolPrior().fit(X[:, 0]).transform(X[:3, 0]).shape == (3, X.shape[2])


def test_a_constant_pool_maps_to_zero_instead_of_dividing_by_it():
    Z = PoolPrior().fit_transform(np.ones((4, 2, 3), np.float32))
    assert np.isfinite(Z).all() and not Z.any()


def test_bad_input_is_named():
    X = pool()
    with pytest.raises(NotFittedError):
        PoolPrior().transform(X)
    with pytest.raises(ValueError, match="is expecting 10 features"):
        PoolPrior().fit(X).transform(X[:, :, :4])
    with pytest.raises(ValueError, match="at least 2 documents"):
        PoolPrior().fit(X[:1])
    with pytest.raises(ValueError, match="power must be a number >= 0"):
        PoolPrior(power=-1).fit(X)
    bad = X.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"unlabelled pool.*NaN or inf.*first rows \[3\]"):
        PoolPrior().fit(bad)


def test_cross_validation_takes_the_prior_where_the_labels_follow_the_pools_main_directions():
    """200 dimensions, 3 of them with 3x the spread of the rest: labels along one of those 3, the prior pays (its
    penalty spares them); along one of the others, it does not. 20 labels per class, 10 seeds."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1000, 200)) * np.r_[np.full(3, 3.0), np.ones(197)])[:, None, :].astype(np.float32)
    Z = PoolPrior().fit_transform(X)
    taken = {}
    for name, y in (("main", X[:, 0, 0] > 0), ("minor", X[:, 0, -1] > 0)):
        sets = [sample_budget(y, per_class=20, random_state=s) for s in range(10)]
        taken[name] = sum(prior_helps(X, Z, y, sets, list(range(10))))
    assert taken["main"] >= 9 and taken["minor"] <= 1
    one_each = [np.array([0, 1])]  # nothing to hold out: no evidence, no prior
    assert prior_helps(X, Z, np.arange(1000) % 2, one_each, [0]) == [False]


@parametrize_with_checks([PoolPrior()])
def test_scikit_learn_transformer_checks(estimator, check):
    check(estimator)
