import numpy as np
import pytest

from extract.batching import token_budget_batches


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
