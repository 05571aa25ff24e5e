import numpy as np
import pytest

from finetext.extract.batching import token_budget_batches


def test_every_document_once_within_budget_longest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = token_budget_batches(lengths, max_tokens=1024)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 1024
    firsts = [lengths[b].max() for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_a_document_longer_than_the_budget_gets_its_own_batch():
    batches = token_budget_batches(np.array([5, 5000, 5]), max_tokens=100)
    assert [b.tolist() for b in batches] == [[1], [0, 2]]


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches(np.array([1]), max_tokens=0)


def test_pad_right_pads_every_document_on_the_right():
    from finetext.extract.batching import pad_right

    ids, types = [[5, 6, 7], [8], [9, 10]], [[0, 0, 1], [0], [0, 1]]
    batch = pad_right(ids, types, [2, 0], pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"], [[9, 10, 0], [5, 6, 7]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(batch["token_type_ids"], [[0, 1, 0], [0, 0, 1]])
    assert "token_type_ids" not in pad_right(ids, None, [1], pad_id=3)
