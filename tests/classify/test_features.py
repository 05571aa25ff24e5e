"""Feature checks and the per-layer normalisations, against numpy by hand."""
from __future__ import annotations

import numpy as np
import pytest

from finetext.classify import LayerAttention
from finetext.classify.features import normalization_stats, prepare
from tests.classify.test_heads import toy


def test_layer_normalisation_weights_each_layer_by_its_isotropy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2, 16)).astype(np.float32)
    X[:, 0] += 4.0  # layer 0: every document points the same way (anisotropic); layer 1 spread out
    mean, std = normalization_stats(prepare(X, "layer"), "layer")
    got = (prepare(X, "layer") - mean) / std
    # by hand: unit vectors scaled to √H, centred, times ι = √(1 - |mean unit vector|²)
    Z = X / np.linalg.norm(X, axis=-1, keepdims=True) * 4.0
    iota = np.sqrt(1 - (Z.mean(0) ** 2).sum(-1) / 16)  # (L,)
    np.testing.assert_allclose(got, (Z - Z.mean(0)) * iota[:, None], atol=1e-5)
    rms = np.sqrt((got ** 2).mean(axis=(0, 2)))
    np.testing.assert_allclose(rms, iota ** 2, rtol=1e-4)
    assert rms[0] < 0.3 < 0.9 < rms[1]  # the anisotropic layer counts far less


@pytest.mark.parametrize("mode", ["standard", "none"])
def test_other_normalisations(mode):
    X, _ = toy(n=40)
    mean, std = normalization_stats(prepare(X, mode), mode)
    got = (prepare(X, mode) - mean) / std
    want = (X - X.mean(0)) / X.std(0) if mode == "standard" else X
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_normalisation_is_layer_with_few_labels_and_standard_when_validated(tmp_path, small_plans):
    X, y = toy(n=120)
    X[:, -1] = X[:, 2]  # the last layer carries the labels: few labels keep the isotropy weighting
    few = LayerAttention(random_state=0).fit(X[:30], y[:30])  # ~10 per class: no validation
    small_plans(20, landmarks=100, max_epochs=40)
    many = LayerAttention(n_members=3, random_state=0).fit(X, y)
    assert few.normalization_ == {"linear": "layer"} and few.state_["b"].shape[1] == 1
    # validated: a linear ensemble on standardised layers and an RBF one on layer-normalised kernel features
    assert many.normalization_ == {"linear": "standard", "rbf": "layer"} and many.state_["b"].shape[1] == 3
    Xt, yt = toy(seed=1)
    Xt[:, -1] = Xt[:, 2]
    assert many.score(Xt, yt) > 0.8
    for name, head in (("few", few), ("many", many)):
        head.save(str(tmp_path / name))
        again = LayerAttention.load(str(tmp_path / name))
        assert again.normalization_ == head.normalization_
        np.testing.assert_allclose(again.predict_proba(X), head.predict_proba(X), atol=1e-6)
