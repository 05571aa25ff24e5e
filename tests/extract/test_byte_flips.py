"""Byte flips anywhere in a cache: `verify` fails loudly on every flip that changes content, and `open_cache`
already on those in the metadata (attributes, label names)."""
from __future__ import annotations

import random

import h5py
import pytest

from finetext.extract import CacheFormatError, extract_corpus, open_cache, verify_cache
from tests.conftest import LABELS, SENTENCES, write_csv


@pytest.fixture(scope="module")
def cache_bytes(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("flips")
    rows = [{"id": f"doc-{i:04d}", "text": t, "label": label} for i, (t, label) in enumerate(zip(SENTENCES, LABELS))]
    corpus = write_csv(root / "c.csv", rows)
    out = root / "c.h5"
    extract_corpus(str(corpus), out, model=str(tiny_bert), id_column="id", max_length=16, progress=False)
    return out.read_bytes()


DATASETS = ("features/mean", "labels", "label_names", "ids", "n_tokens", "truncated")


def content(path):
    """Everything a cache says, read by name as finetext reads it: its attributes and every dataset's values."""
    with h5py.File(path, "r") as f:
        attrs = {k: v.item() if hasattr(v, "item") else v for k, v in f.attrs.items()}
        data = {name: f[name][()].tobytes() if f[name].dtype.kind != "O" else repr(list(f[name][()]))
                for name in DATASETS}
    return attrs, data


def flipped(tmp_path, data: bytes, offset: int, bit: int = 0):
    changed = bytearray(data)
    changed[offset] ^= 1 << bit
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(changed))
    return path


@pytest.mark.parametrize("needle, what", [(b"politics", "label_names"), (b"doc-0007", "ids"),
                                          (b'"max_length": 16', "settings"), (b"fp32", "compute_dtype")])
def test_a_flip_in_the_metadata_is_named(tmp_path, cache_bytes, needle, what):
    offsets = [i for i in range(len(cache_bytes)) if cache_bytes.startswith(needle, i)]
    assert offsets, f"{needle!r} is not in the file"
    named = 0
    for offset in offsets:  # every copy of it in the file, each flipped alone
        path = flipped(tmp_path, cache_bytes, offset + len(needle) - 1)
        with pytest.raises(CacheFormatError) as caught:
            verify_cache(path)
        named += what in str(caught.value)
        if what != "ids":  # attributes and label names are checked on every open, not only by verify
            with pytest.raises(CacheFormatError):
                open_cache(path).close()
    assert named >= 1  # the copy finetext reads is named in the message


def test_every_flip_anywhere_is_caught_or_changes_nothing(tmp_path, cache_bytes):
    reference_path = tmp_path / "reference.h5"
    reference_path.write_bytes(cache_bytes)
    reference = content(reference_path)
    rng = random.Random(0)
    caught = unchanged = 0
    for _ in range(40):  # the slow set flips many more
        path = flipped(tmp_path, cache_bytes, rng.randrange(len(cache_bytes)), rng.randrange(8))
        try:
            verify_cache(path)
        except CacheFormatError:
            caught += 1
            continue
        assert content(path) == reference  # verify passed: the flip hit bytes that mean nothing
        unchanged += 1
    assert caught and unchanged  # both kinds of byte are in the file, and every changed meaning was caught


@pytest.mark.slow
def test_many_flips_anywhere_are_caught_or_change_nothing(tmp_path, cache_bytes):
    reference_path = tmp_path / "reference.h5"
    reference_path.write_bytes(cache_bytes)
    reference = content(reference_path)
    rng = random.Random(1)
    for _ in range(600):
        path = flipped(tmp_path, cache_bytes, rng.randrange(len(cache_bytes)), rng.randrange(8))
        try:
            verify_cache(path)
        except CacheFormatError:
            continue
        assert content(path) == reference
