"""Describing an encoder: the weights hash and its memo."""
from __future__ import annotations

import hashlib
import json
import os

from finetext.extract.encoder import weights_hash, weights_memo_path


def test_weights_hash_is_remembered_by_size_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    (folder / "config.json").write_text("{}")  # not a weight file
    expected = hashlib.sha256(b"model.safetensors" + b"a" * 1000).hexdigest()
    assert weights_hash(str(folder)) == expected
    assert json.loads(weights_memo_path().read_text())[str(folder.resolve())]["sha256"] == expected

    stat = weights.stat()  # same size and time, other bytes: the memo answers without reading the file
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_hash(str(folder)) == expected

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten later: hashed again
    assert weights_hash(str(folder)) == hashlib.sha256(b"model.safetensors" + b"b" * 1000).hexdigest()
    assert weights_hash("some-org/some-hub-model") is None  # hub names are identified by their revision


def test_a_damaged_memo_costs_a_hash_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"weights")
    weights_memo_path().parent.mkdir(parents=True)
    weights_memo_path().write_text("{not json")
    assert weights_hash(str(folder)) == hashlib.sha256(b"pytorch_model.bin" + b"weights").hexdigest()
    assert str(folder.resolve()) in json.loads(weights_memo_path().read_text())  # rewritten whole
    assert [p.name for p in weights_memo_path().parent.iterdir()] == ["weights-sha256.json"]  # no temp file left
    weights_memo_path().write_text(json.dumps({str(folder.resolve()): ["not", "an", "entry"]}))  # JSON, wrong shape
    assert weights_hash(str(folder)) == hashlib.sha256(b"pytorch_model.bin" + b"weights").hexdigest()


def test_without_a_writable_cache_folder_the_hash_is_still_right(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # finetext/ cannot be made under a file
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w")
    for _ in range(2):  # nothing remembered: hashed both times
        assert weights_hash(str(folder)) == hashlib.sha256(b"model.safetensors" + b"w").hexdigest()
