"""Many heads at once equal one at a time; save/load round trips give identical predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from finetext.classify import (HeadFormatError, LastLayerLogReg, LayerAttention, ScalarMix, TokenLayerAttention,
                               check_feature_source, fit_many, load_head, sample_budget)
from finetext.classify.heads import _stack_groups
from finetext.classify.plan import plan_sets
from tests.classify.test_heads import toy


@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_batched_heads_equal_sequential_fits(Head):
    X, y = toy(n=200)
    row_sets = [sample_budget(y, per_class=k, random_state=s) for k in (4, 16) for s in (0, 1)]
    seeds = [0, 1, 0, 1]
    head = Head()
    batched = fit_many(head, X, y, row_sets, seeds)
    Xt, _ = toy(seed=5)
    for est, rows, seed in zip(batched, row_sets, seeds):
        alone = Head(random_state=seed).fit(X[rows], y[rows])
        np.testing.assert_allclose(est.predict_proba(Xt), alone.predict_proba(Xt), atol=2e-4)


def test_early_stopped_sets_leave_the_stack_and_equal_their_fits_alone(small_plans):
    X, y = toy(n=300)
    row_sets = [sample_budget(y, per_class=30, random_state=s) for s in range(4)]
    small_plans(10, max_epochs=150, patience=3)
    head = LayerAttention(n_members=2)
    batched = fit_many(head, X, y, row_sets, list(range(4)))
    stops = {int(est.state_["best_epoch"].max()) for est in batched}
    assert len(stops) > 1  # the sets stopped at different epochs: the stack shrank while the rest trained on
    Xt, _ = toy(seed=5)
    for seed, (est, rows) in enumerate(zip(batched, row_sets)):
        alone = LayerAttention(**{**head.get_params(), "random_state": seed}).fit(X[rows], y[rows])
        np.testing.assert_array_equal(est.state_["best_epoch"], alone.state_["best_epoch"])
        np.testing.assert_allclose(est.predict_proba(Xt), alone.predict_proba(Xt), atol=2e-4)


@pytest.mark.parametrize("Head", [ScalarMix, LayerAttention])
def test_padded_stacks_of_mixed_sizes_equal_fits_alone(Head, small_plans):
    """What a GPU does (_stack_groups with pad): sets of different sizes share a stack, padded with weight-0
    rows; validated and unvalidated sets in stacks of their own. Each head equals its fit alone."""
    X, y = toy(n=300)
    row_sets = [sample_budget(y, per_class=k, random_state=s) for k in (3, 5, 30, 40) for s in (0, 1)]
    seeds = [0, 1] * 4
    small_plans(10, max_epochs=150, patience=3)
    head = Head(n_members=2)
    codes = np.unique(y, return_inverse=True)[1]
    plans = plan_sets(X, codes, 3, row_sets, seeds, 2, torch.device("cpu"))
    groups = [members for _, members in _stack_groups(plans, row_sets, pad=True)]
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # two sizes each: unvalidated, validated
    states = head._fit_sets(X, codes, 3, row_sets, seeds, pad=True)
    Xt, _ = toy(seed=5)
    for state, rows, seed in zip(states, row_sets, seeds):
        est = clone(head).set_params(random_state=seed)
        est._set_fitted(np.unique(y), X.shape, state)
        alone = clone(est).fit(X[rows], y[rows])
        np.testing.assert_array_equal(est.state_["best_epoch"], alone.state_["best_epoch"])
        np.testing.assert_allclose(est.predict_proba(Xt), alone.predict_proba(Xt), atol=2e-4)
        np.testing.assert_allclose(est.layer_weights_, alone.layer_weights_, atol=1e-5)


def test_padded_kernel_stacks_hold_the_sets_that_train_a_kernel_part(small_plans):
    X, y = toy(n=300)
    row_sets = [sample_budget(y, per_class=k, random_state=0) for k in (5, 20, 30)]  # 15, 60, 90 rows
    small_plans(10, landmarks=50, max_epochs=40, patience=3)
    head = LayerAttention(n_members=2)
    codes = np.unique(y, return_inverse=True)[1]
    plans = plan_sets(X, codes, 3, row_sets, [0, 0, 0], 2, torch.device("cpu"))
    assert [p.landmarks for p in plans] == [0, 50, 50]
    assert sorted(sorted(m) for _, m in _stack_groups(plans, row_sets, pad=True)) == [[0], [1, 2]]
    Xt, _ = toy(seed=5)
    for state, rows in zip(head._fit_sets(X, codes, 3, row_sets, [0, 0, 0], pad=True), row_sets):
        est = clone(head)
        est._set_fitted(np.unique(y), X.shape, state)
        np.testing.assert_allclose(est.predict_proba(Xt), clone(head).fit(X[rows], y[rows]).predict_proba(Xt),
                                   atol=2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_many_on_a_gpu_pads_budgets_into_one_stack_and_equals_fits_alone(small_plans):
    X, y = toy(n=300)
    row_sets = [sample_budget(y, per_class=k, random_state=s) for k in (3, 5, 30, 40) for s in (0, 1)]
    small_plans(10, max_epochs=150, patience=3)
    head = LayerAttention(n_members=2, device="cuda")
    Xt, _ = toy(seed=5)
    for seed, (est, rows) in enumerate(zip(fit_many(head, X, y, row_sets, [0, 1] * 4), row_sets)):
        alone = clone(head).set_params(random_state=seed % 2).fit(X[rows], y[rows])
        np.testing.assert_allclose(est.predict_proba(Xt), alone.predict_proba(Xt), atol=2e-4)


def test_fit_many_refuses_a_one_class_set():
    X, y = toy()
    with pytest.raises(ValueError, match="one class only"):
        fit_many(LayerAttention(), X, y, [np.flatnonzero(y == "neg")[:5]])


@pytest.mark.parametrize("head", [LastLayerLogReg(layer=2), ScalarMix(),
                                  LayerAttention(class_weight={"neg": 2.0})])
def test_save_load_round_trip(tmp_path, head):
    X, y = toy()
    head.fit(X, y)
    head.save(tmp_path / "head", feature_info={"model_id": "m", "n_layers": 4, "hidden_size": 8})
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["config.json", "weights.safetensors"]
    loaded = load_head(tmp_path / "head")
    assert type(loaded) is type(head) and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert list(loaded.classes_) == list(head.classes_)
    with pytest.raises(ValueError, match=r"\(4, 8\), got \(7, 384\)"):
        loaded.predict(np.zeros((1, 7, 384), np.float32))
    with pytest.raises(ValueError, match="model_id='m'; the cache has model_id='other'"):
        check_feature_source(loaded.feature_info_, {"model_id": "other"})
    head.save(tmp_path / "head")  # overwriting replaces the folder whole
    assert json.loads((tmp_path / "head" / "config.json").read_text())["feature_info"] == {}
    # the class's own loader, and Hugging Face's names for the pair
    assert head.save_pretrained(tmp_path / "hf") == tmp_path / "hf"
    again = type(head).from_pretrained(tmp_path / "hf")
    assert type(again) is type(head) and type(head).load(tmp_path / "head").get_params() == head.get_params()
    np.testing.assert_array_equal(again.predict_proba(X), head.predict_proba(X))
    other = ScalarMix if isinstance(head, LayerAttention) else LayerAttention
    with pytest.raises(HeadFormatError, match=f"holds a {type(head).__name__}, not a {other.__name__}"):
        other.load(tmp_path / "head")
    with pytest.raises(NotFittedError):
        clone(head).save(tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()


def test_a_class_weight_dict_keyed_by_numbers_loads_with_its_keys(tmp_path):
    X, y = toy()
    codes = np.unique(y, return_inverse=True)[1]  # labels 0, 1, 2: JSON would make the keys strings
    head = LayerAttention(class_weight={0: 3.0, 2: 0.5}).fit(X, codes)
    loaded = load_head(head.save(tmp_path / "head"))
    assert loaded.class_weight == {0: 3.0, 2: 0.5}
    np.testing.assert_array_equal(clone(loaded).fit(X, codes).predict_proba(X), head.predict_proba(X))


def test_how_a_fit_showed_its_progress_is_not_saved(tmp_path):
    X, y = toy()
    head = ScalarMix(verbose=True).fit(X, y)
    assert "verbose" not in json.loads((head.save(tmp_path / "head") / "config.json").read_text())["params"]
    assert load_head(tmp_path / "head").verbose is False


def test_loading_refuses_what_is_not_a_head(tmp_path):
    with pytest.raises(HeadFormatError, match="config.json"):
        load_head(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "finetext-head", "version": 1, "class": "os.system",
                                                      "n_layers": 2, "hidden_size": 4, "classes": ["a", "b"]}))
    with pytest.raises(HeadFormatError, match="unknown head class 'os.system'"):
        load_head(tmp_path)


def test_token_layer_attention_learns_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 160)
    docs = []
    for label in y:  # one informative token hidden among noise tokens, in layer 1
        doc = rng.normal(size=(rng.integers(3, 9), 3, 6)).astype(np.float32)
        doc[rng.integers(len(doc)), 1, 0] += 8.0 if label else -8.0
        docs.append(doc)
    head = TokenLayerAttention().fit(docs[:120], y[:120])
    assert head.score(docs[120:], y[120:]) >= 0.8
    head.save(tmp_path / "tok")
    loaded = TokenLayerAttention.load(tmp_path / "tok")
    np.testing.assert_array_equal(loaded.predict_proba(docs[120:]), head.predict_proba(docs[120:]))
