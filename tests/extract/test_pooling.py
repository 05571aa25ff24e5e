"""Pooling against a numpy computation by hand on the plain model outputs, both padding sides."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from finetext.extract.pooling import POOLINGS, pool
from tests.conftest import SENTENCES


def hand_pool(hidden: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """hidden (layers, batch, seq, hidden), mask (batch, seq) -> (batch, layers, hidden), one doc at a time."""
    out = []
    for b in range(mask.shape[0]):
        real = np.flatnonzero(mask[b])
        states = hidden[:, b, real]  # (layers, n_real, hidden)
        out.append({"mean": states.mean(1), "cls": states[:, 0], "last": states[:, -1],
                    "max": states.max(1)}[method])
    return np.stack(out)


@pytest.mark.parametrize("fixture,side", [("tiny_bert", "right"), ("tiny_bert", "left"),
                                          ("tiny_gpt2", "right"), ("tiny_gpt2", "left")])
def test_pool_matches_hand_computation(request, fixture, side):
    path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = side
    model = AutoModel.from_pretrained(path).eval()
    enc = tokenizer(SENTENCES[:4] + ["short"], padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    assert (mask == 0).any(), "the batch must contain padding to test the padding side"
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # correct positions under left padding too
    with torch.inference_mode():
        out = model(**enc, position_ids=position_ids, output_hidden_states=True)
    hidden = torch.stack(out.hidden_states)  # (layers, batch, seq, hidden)
    for method in POOLINGS:
        got = pool(hidden, mask, method).numpy()
        want = hand_pool(hidden.numpy(), mask.numpy(), method)
        assert got.shape == (5, len(out.hidden_states), model.config.hidden_size if fixture == "tiny_bert" else 32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{fixture} {side} {method}")


def test_last_and_cls_pick_real_tokens_on_either_side():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(1, 2, 4, 1)  # (layers, batch, seq, hidden)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last")[:, 0, 0].tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last")[:, 0, 0].tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls")[:, 0, 0].tolist() == [2.0, 4.0]
    assert pool(hidden, left, "max")[:, 0, 0].tolist() == [3.0, 7.0]


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match="mean, cls, last, max"):
        pool(torch.zeros(1, 1, 1, 1), torch.ones(1, 1), "median")
