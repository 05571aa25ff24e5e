"""Tokenising documents: the tight first cut gives the ids of the whole text, and flags truncation right."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from finetext.extract.corpus import Record
from finetext.extract.tokens import CHARS_PER_TOKEN_CAP, _tokenize, tokenize


def records(texts: list[str]) -> list[Record]:
    return [Record(i + 1, str(i), t, None, None) for i, t in enumerate(texts)]


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
@pytest.mark.parametrize("max_length", [16, 64])
def test_the_tight_cut_gives_the_ids_of_the_wide_one(request, bbc_slice, fixture, max_length):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    articles = [p.read_text() for p in sorted(bbc_slice.rglob("*.txt"))]  # real articles: every one is cut
    texts = articles + ["x" * 3000, "short", "a " * 400, "α" * 150 + " βγ" * 900]  # the first and last go wide
    block = records(texts)
    ids, _, truncated = tokenize(tokenizer, block, max_length)
    wide_ids, _, wide_truncated = _tokenize(tokenizer, block, max_length, max_length * CHARS_PER_TOKEN_CAP)
    assert ids == wide_ids == [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    assert truncated.tolist() == wide_truncated.tolist()
    assert truncated[:len(articles)].all()


def test_a_document_that_ends_in_spaces_past_the_cut_is_not_truncated(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    block = records(["word " * 14 + " " * 5000])  # 14 words + 2 special tokens: 16 exactly
    ids, _, truncated = tokenize(tokenizer, block, 16)
    assert len(ids[0]) == 16 and truncated.tolist() == [False]
    assert _tokenize(tokenizer, block, 16, 16 * CHARS_PER_TOKEN_CAP)[2].tolist() == [True]  # the wide cut alone


def test_sentence_pairs_are_cut_wide_and_keep_their_token_types(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    block = [Record(1, "0", "is it " * 20, "yes " * 3000, None), Record(2, "1", "why", "so", None)]
    ids, types, truncated = tokenize(tokenizer, block, 32)
    whole = tokenizer(["is it " * 20, "why"], ["yes " * 3000, "so"], truncation=True, max_length=32)
    assert ids == whole["input_ids"] and types == whole["token_type_ids"]
    assert truncated.tolist() == [True, False]



def test_without_flags_pairs_are_tokenised_once(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    block = [Record(1, "0", "is it " * 5, "yes " * 5, None)]  # 10 + 5 words + 3 special tokens: 18 exactly
    exact, _, truncated = tokenize(tokenizer, block, 18)
    assert len(exact[0]) == 18 and truncated.tolist() == [False]  # told by tokenising it again, whole
    ids, _, loose = tokenize(tokenizer, block, 18, flags=False)
    assert ids == exact and loose.tolist() == [True]  # only "max_length tokens": no second pass


def test_no_documents_no_tokens(tiny_bert):
    ids, types, truncated = tokenize(AutoTokenizer.from_pretrained(tiny_bert), [], 16)
    assert ids == [] and types is None and truncated.shape == (0,)
