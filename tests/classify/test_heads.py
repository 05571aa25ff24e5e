"""Heads: the maths against numpy by hand, the estimator contract, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from finetext.classify import LastLayerLogReg, LayerAttention, ScalarMix, TokenLayerAttention, fit_many
from finetext.classify.stack import LayerAttentionStack, ScalarMixStack


def toy(n=120, L=4, H=8, seed=0):
    """Labels carried by layer 2 only; the other layers are noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, L, H)).astype(np.float32)
    X[:, 2, :3] += 3 * np.eye(3)[y]
    return X, np.array(["neg", "neu", "pos"])[y]


def softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_scalar_mix_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    m = ScalarMixStack(1, 2, 3, 4, 5, gen)
    with torch.no_grad():
        m.w.normal_(generator=gen)
        m.gamma.fill_(1.7)
    x = np.random.default_rng(1).normal(size=(1, 6, 3, 4)).astype(np.float32)
    got = m(torch.from_numpy(x)).detach().numpy()  # (1, 2, 6, 5)
    w, W, b = m.w.detach().numpy(), m.W.detach().numpy(), m.b.detach().numpy()
    for k in range(2):
        z = 1.7 * np.einsum("nlh,l->nh", x[0], softmax(w[0, k]))
        np.testing.assert_allclose(got[0, k], z @ W[0, k] + b[0, k], rtol=1e-5, atol=1e-5)


def test_layer_attention_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    m = LayerAttentionStack(1, 1, 3, 4, 2, gen)
    with torch.no_grad():
        m.u.normal_(generator=gen)
        m.w.normal_(generator=gen)
    x = np.random.default_rng(2).normal(size=(1, 5, 3, 4)).astype(np.float32)
    alpha = m.layer_weights(torch.from_numpy(x)).detach().numpy()[0, 0]  # (5, 3)
    u, p = m.u.detach().numpy()[0, 0], m.w.detach().numpy()[0, 0]
    want = softmax(np.einsum("nlh,lh->nl", x[0], u) / 2.0 + p)  # sqrt(H) = 2
    np.testing.assert_allclose(alpha, want, rtol=1e-5, atol=1e-6)
    logits = m(torch.from_numpy(x)).detach().numpy()[0, 0]  # (5, 2)
    W, b = m.W.detach().numpy()[0, 0], m.b.detach().numpy()[0, 0]  # (3, 4, 2), (2,)
    per_layer = np.einsum("nlh,lhc->nlc", x[0], W)
    np.testing.assert_allclose(logits, np.einsum("nlc,nl->nc", per_layer, want) + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_heads_learn_and_find_the_informative_layer(Head):
    X, y = toy(n=600)  # the selector is held tightly: it moves once the evidence is there
    Xt, yt = toy(seed=1)
    head = Head(random_state=0).fit(X, y)
    assert head.score(Xt, yt) > 0.85
    assert int(np.argmax(head.layer_weights_)) == 2
    proba = head.predict_proba(Xt)
    assert proba.shape == (len(Xt), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert list(head.classes_) == ["neg", "neu", "pos"]
    weights = head.layer_weights(Xt)
    assert weights.shape == (len(Xt), 4) and np.allclose(weights.sum(1), 1, atol=1e-5)


def test_seeded_fits_are_identical_and_seeds_differ():
    X, y = toy()
    a = LayerAttention(random_state=1).fit(X, y).predict_proba(X)
    b = LayerAttention(random_state=1).fit(X, y).predict_proba(X)
    c = LayerAttention(random_state=2).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_bf16_precision_trains_the_same_heads_up_to_rounding(Head, small_plans):
    X, y = toy(n=300)
    Xt, yt = toy(seed=5)
    small_plans(40)  # 100 rows per class: the validated ensemble, early stopping included
    full = Head().fit(X, y)
    half = Head(precision="bf16").fit(X, y)
    assert half.state_["W"].dtype == np.float32  # parameters stay fp32: only the features' products are bf16
    assert not np.array_equal(full.state_["W"], half.state_["W"])  # it did train differently
    assert np.mean(full.predict(Xt) == half.predict(Xt)) > 0.97
    assert abs(full.score(Xt, yt) - half.score(Xt, yt)) < 0.03
    with pytest.raises(ValueError, match="precision must be one of"):
        Head(precision="fp16").fit(X, y)


@pytest.mark.slow
@parametrize_with_checks([LastLayerLogReg(), ScalarMix(), LayerAttention(), TokenLayerAttention()])
def test_scikit_learn_estimator_checks(estimator, check):
    """scikit-learn's own checks, on its 2-D data (one layer per document; for the token head, one token): every
    check of every head passes (the two that need SCIPY_ARRAY_API or pandas skip themselves without them)."""
    check(estimator)


def test_two_d_features_are_one_layer():
    X, y = toy()
    head = LayerAttention().fit(X[:, 2], y)  # the informative layer alone, as (n_docs, hidden)
    assert (head.n_layers_, head.n_features_in_) == (1, 8) and head.score(X[:, 2], y) > 0.9
    assert np.array_equal(head.predict_proba(X[:, 2]), head.predict_proba(X[:, 2:3]))


def test_class_weight_dict_weights_each_class_in_fits_alone_and_batched():
    X, y = toy()
    heavy = {"neg": 100.0, "neu": 1e-3, "pos": 1e-3}  # "neu" and "pos" barely count
    head = LayerAttention(class_weight=heavy).fit(X, y)
    plain = LayerAttention().fit(X, y)
    assert (head.predict(X) == "neg").mean() > 0.6 > (plain.predict(X) == "neg").mean()
    assert np.array_equal(LayerAttention(class_weight={"neg": 2.0}).fit(X, y).predict_proba(X),
                          LayerAttention(class_weight={"neg": 2.0, "neu": 1, "pos": 1}).fit(X, y).predict_proba(X))
    rows = [np.arange(60), np.arange(30, 120)]
    batched = fit_many(ScalarMix(class_weight=heavy), X, y, rows, [0, 1])
    for r, s, b in zip(rows, [0, 1], batched):
        alone = ScalarMix(class_weight=heavy, random_state=s).fit(X[r], y[r])
        np.testing.assert_allclose(b.predict_proba(X), alone.predict_proba(X), atol=1e-6)
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced' or a dict"):
        LayerAttention(class_weight="heavy").fit(X, y)


def test_verbose_shows_the_epochs_and_changes_nothing(capsys, small_plans):
    X, y = toy()
    small_plans(10)  # validated: the bar ends at early stopping
    quiet = LayerAttention().fit(X, y)
    loud = LayerAttention(verbose=True).fit(X, y)
    assert "epoch" in capsys.readouterr().err
    np.testing.assert_array_equal(loud.predict_proba(X), quiet.predict_proba(X))


def test_sklearn_tools_work():
    X, y = toy()
    assert cross_val_score(ScalarMix(), X, y, cv=3).mean() > 0.5  # chance: 0.33
    grid = GridSearchCV(LastLayerLogReg(), {"layer": [0, 2]}, cv=3).fit(X, y)
    assert grid.best_params_ == {"layer": 2}
    pipe = Pipeline([("head", LayerAttention())]).fit(X, y)
    assert pipe.score(X, y) > 0.8


def test_bad_input_names_the_problem_and_fix():
    X, y = toy()
    with pytest.raises(ValueError, match=r"3-D array .* Reshape your data"):
        ScalarMix().fit(X[:, 0, 0], y)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        LayerAttention().fit(scipy.sparse.csr_matrix(X[:, 0]), y)
    with pytest.raises(ValueError, match="requires y to be passed"):
        LayerAttention().fit(X, None)
    bad = X.copy()
    bad[7, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf features in 1 document\(s\), first rows \[7\]"):
        LayerAttention().fit(bad, y)
    with pytest.raises(ValueError, match="only one class"):
        LayerAttention().fit(X, np.full(len(X), "neg"))
    with pytest.raises(ValueError, match="C must be a positive number"):
        ScalarMix(C=0).fit(X, y)
    with pytest.raises(ValueError, match="n_members must be a positive integer"):
        ScalarMix(n_members=0).fit(X, y)
    head = ScalarMix().fit(X, y)
    with pytest.raises(ValueError, match=r"X has 64 features, but ScalarMix is expecting 32 .* \(4, 8\), got \(4, 16"):
        head.predict(np.zeros((2, 4, 16), np.float32))
    with pytest.raises(NotFittedError):
        LayerAttention().predict(X)
    with pytest.raises(ValueError, match="layer=9 does not exist"):
        LastLayerLogReg(layer=9).fit(X, y)


def test_device_is_checked_and_auto_is_the_cpu_without_a_gpu():
    X, y = toy()
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        LayerAttention(device="gpu0").fit(X, y)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            LayerAttention(device="cuda").fit(X, y)
        auto = LayerAttention(device="auto", random_state=3).fit(X, y).predict_proba(X)
        assert np.array_equal(auto, LayerAttention(random_state=3).fit(X, y).predict_proba(X))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_a_gpu_trains_the_same_heads_up_to_rounding(Head):
    X, y = toy(n=600)
    cpu = Head(random_state=0).fit(X, y)
    gpu = Head(random_state=0, device="cuda").fit(X, y)
    np.testing.assert_allclose(gpu.layer_weights_, cpu.layer_weights_, atol=0.02)
    assert (gpu.predict(X) == cpu.predict(X)).mean() > 0.97


def test_unseen_labels_at_score_are_refused():
    X, y = toy()
    head = LastLayerLogReg().fit(X, y)
    with pytest.raises(ValueError, match=r"labels \['other'\] were not among the training classes"):
        head.score(X[:3], ["neg", "other", "pos"])


def test_validation_folds_train_members_that_early_stop(small_plans):
    X, y = toy(n=300)
    small_plans(20, max_epochs=60, patience=5)
    head = LayerAttention(n_members=3).fit(X, y)
    assert head.state_["b"].shape[1] == 3  # three members, each validated on its own fold
    assert head.score(*toy(seed=1)) > 0.75
    noise = np.random.default_rng(0).integers(0, 2, 300)  # labels unrelated to X: validation loss rises at once
    small_plans(20, max_epochs=200, patience=5)
    stopped = LayerAttention(n_members=3, C=100).fit(X, noise)
    assert (stopped.state_["best_epoch"] < 150).all()


def test_a_class_smaller_than_the_ensemble_still_validates_but_one_row_does_not(small_plans):
    X, y = toy(n=300)
    rare = np.flatnonzero(y == "neu")
    small_plans(20, max_epochs=60, patience=5)
    for keep, members in ((2, 3), (1, 1)):  # 2 rows: in every member's training rows; 1: not
        rows = np.setdiff1d(np.arange(len(y)), rare[keep:])
        head = LayerAttention(n_members=3).fit(X[rows], y[rows])
        assert head.state_["b"].shape[1] == members
        assert head.normalization_["linear"] == ("standard" if keep == 2 else "layer")


def test_few_labels_standardise_only_when_another_layer_beats_the_last(small_plans):
    X, y = toy(n=200)  # the labels live in layer 2; the last layer is noise
    assert LayerAttention().fit(X, y).normalization_["linear"] == "standard"
    X[:100, -1] = 2 * X[:100, 2]  # the first half's last layer carries them too
    both = fit_many(LayerAttention(), X, y, [np.arange(100), np.arange(100, 200)], seeds=[0, 1])
    assert [h.normalization_["linear"] for h in both] == ["layer", "standard"]
    for head, rows, seed in zip(both, [np.arange(100), np.arange(100, 200)], [0, 1]):  # one call = fits alone
        alone = LayerAttention(random_state=seed).fit(X[rows], y[rows])
        np.testing.assert_allclose(head.predict_proba(X), alone.predict_proba(X), atol=1e-6)
    small_plans(20, max_epochs=30)
    validated = LayerAttention(n_members=3).fit(*toy(n=300))
    assert validated.normalization_["linear"] == "standard"  # with enough labels, always


def test_a_stack_trains_each_set_by_its_own_plan(small_plans):
    """Sets of one size whose labels differ in how they train (validated or not) share no stack: each equals its
    fit alone."""
    X, y = toy(n=300)
    small_plans(20, max_epochs=60, patience=5)
    rare = np.flatnonzero(y == "neu")
    one_row = np.setdiff1d(np.arange(len(y)), rare[1:])  # a class of one row: one member, no validation
    other = np.arange(len(one_row))  # as many rows, every class: a validated ensemble
    fitted = fit_many(LayerAttention(n_members=3), X, y, [one_row, other], [0, 0])
    assert [h.state_["b"].shape[1] for h in fitted] == [1, 3]
    for head, rows in zip(fitted, [one_row, other]):
        alone = LayerAttention(n_members=3).fit(X[rows], y[rows])
        np.testing.assert_allclose(head.predict_proba(X), alone.predict_proba(X), atol=1e-6)
