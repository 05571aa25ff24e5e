"""One layer selector shared by several tasks on cached features."""
from __future__ import annotations

import numpy as np
import pytest

from finetext.classify import LayerAttention
from finetext.classify.multitask import fit_shared_selector
from tests.classify.test_heads import toy


def test_one_task_alone_trains_exactly_as_layer_attention():
    X, y = toy(n=90)  # the labels live in layer 2, not the last: LayerAttention standardises, as the tasks do
    alone = fit_shared_selector({"a": (X, y)}, layer_prior="uniform", random_state=3)["a"]
    single = LayerAttention(n_members=1, random_state=3).fit(X, y)
    assert single.normalization_ == {"linear": "standard"}
    np.testing.assert_allclose(alone.predict_proba(X), single.predict_proba(X), atol=1e-5)


def test_tasks_share_the_selector_and_keep_their_own_classifiers(tmp_path):
    Xa, ya = toy(n=90, seed=0)
    Xb, yb = toy(n=60, seed=1)
    yb = np.where(yb == "pos", "yes", "no")  # another task: two classes of its own
    heads = fit_shared_selector({"a": (Xa, ya), "b": (Xb, yb)}, random_state=0)
    np.testing.assert_array_equal(heads["a"].state_["u"], heads["b"].state_["u"])
    np.testing.assert_array_equal(heads["a"].state_["w"], heads["b"].state_["w"])
    assert list(heads["b"].classes_) == ["no", "yes"] and heads["a"].state_["W"].shape[-1] == 3
    assert heads["a"].score(Xa, ya) > 0.9  # layer 2 carries the labels
    heads["b"].save(str(tmp_path / "b"))
    again = LayerAttention.load(str(tmp_path / "b"))
    np.testing.assert_allclose(again.predict_proba(Xb), heads["b"].predict_proba(Xb), atol=1e-6)


def test_tasks_of_different_models_are_refused():
    Xa, ya = toy(n=30, H=8)
    Xb, yb = toy(n=30, H=6)
    with pytest.raises(ValueError, match="same --model"):
        fit_shared_selector({"a": (Xa, ya), "b": (Xb, yb)})
    with pytest.raises(ValueError, match="only one class"):
        fit_shared_selector({"a": (Xa, np.full(30, "x"))})
