"""extract_corpus end to end on real HDF5 files: layout, reuse, refusal, corruption, long text, tokens."""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from finetext.extract import CacheFormatError, CacheMismatchError, InputError, extract_corpus, open_cache, verify_cache
from finetext.extract.cache import ShardStore, partial_dir
from finetext.extract.run import hidden_states
from tests.conftest import SENTENCES, write_csv


def run(corpus, out, model, **kw):
    return extract_corpus(str(corpus), out, model=str(model), device="cpu", progress=False, **kw)


def test_cache_matches_the_model_and_reads_with_plain_h5py(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    result = run(small_csv, out, tiny_bert, poolings=["mean", "cls", "last", "max"], storage_dtype="float32",
                 batch_tokens=40)
    assert result.status == "created" and not partial_dir(out).exists()
    with h5py.File(out, "r") as f:  # the documented layout, no finetext involved
        assert f.attrs["format"] == "finetext-cache" and f.attrs["schema_version"] == 2
        assert f["features/mean"].shape == (10, 3, 32)
        assert sorted(f["features"]) == ["cls", "last", "max", "mean"]
        names = [s.decode() for s in f["label_names"][()]]
        assert [names[i] for i in f["labels"][()]] == ["business", "sport", "tech", "politics", "entertainment"] * 2
        assert [s.decode() for s in f["ids"][()]] == [str(i) for i in range(1, 11)]
        mean = f["features/mean"][()]
        n_tokens = f["n_tokens"][()]
    # reference: one document at a time, no padding at all
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    for i, text in enumerate(SENTENCES):
        enc = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = torch.stack(model(**enc, output_hidden_states=True).hidden_states)[:, 0]  # (layers, seq, hidden)
        assert n_tokens[i] == enc["input_ids"].shape[1]
        np.testing.assert_allclose(mean[i], hidden.mean(1).numpy(), atol=1e-5)


def test_same_corpus_and_settings_is_a_noop(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    run(small_csv, out, tiny_bert)
    stamp = out.stat().st_mtime_ns
    again = run(small_csv, out, tiny_bert)
    assert again.status == "up to date" and out.stat().st_mtime_ns == stamp


def test_changed_settings_or_corpus_are_refused_with_both_fingerprints(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    run(small_csv, out, tiny_bert)
    before = out.read_bytes()
    with pytest.raises(CacheMismatchError) as err:
        run(small_csv, out, tiny_bert, max_length=8)
    msg = str(err.value)
    assert "other settings" in msg and "max_length: cache 128, asked 8" in msg and "--force" in msg
    assert msg.count("settings_fingerprint") == 1 and "asked" in msg
    changed = write_csv(tmp_path / "changed.csv", [{"text": t + "!", "label": "x"} for t in SENTENCES])
    with pytest.raises(CacheMismatchError, match="another corpus"):
        run(changed, out, tiny_bert)
    assert out.read_bytes() == before  # refused runs touch nothing
    assert run(changed, out, tiny_bert, force=True).status == "created"
    with open_cache(out) as cache:
        assert cache.label_names == ["x"]


def test_bad_input_leaves_nothing_at_the_destination(tmp_path, tiny_bert):
    bad = write_csv(tmp_path / "bad.csv", [{"text": "fine", "label": "a"}, {"text": " ", "label": "a"}])
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match="row 2"):
        run(bad, out, tiny_bert)
    assert not out.exists() and not partial_dir(out).exists()


def test_reader_rows_in_any_order_with_duplicates(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    run(small_csv, out, tiny_bert)
    with open_cache(out) as cache:
        full = cache.features("mean")
        rows = [7, 2, 2, 0, -1]
        np.testing.assert_array_equal(cache.features("mean", rows=rows), full[rows])
        np.testing.assert_array_equal(cache.features("mean", rows=[3], layers=[-1]), full[[3]][:, [-1]])
        assert cache.features("mean", rows=[]).shape == (0, 3, 32)
        with pytest.raises(CacheMismatchError, match="--pooling cls"):
            cache.features("cls")
        with pytest.raises(IndexError, match="indices must lie"):
            cache.features("mean", rows=[10])


def test_verify_catches_a_corrupted_chunk(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "c.h5"
    run(small_csv, out, tiny_bert, storage_dtype="float32")
    assert verify_cache(out)[-1].startswith("ok")
    with h5py.File(out, "r") as f:
        offset = f["features/mean"].id.get_offset() if f["features/mean"].chunks is None else \
            f["features/mean"].id.get_chunk_info(0).byte_offset
    data = bytearray(out.read_bytes())
    data[offset + 100] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(CacheFormatError, match="checksum"):
        verify_cache(out)
    with pytest.raises(CacheFormatError, match="not a finetext cache"):
        h5py.File(tmp_path / "other.h5", "w").close()
        verify_cache(tmp_path / "other.h5")


def test_a_million_character_document_is_truncated_and_counted(tmp_path, tiny_bert):
    texts = ["word " * 200_000, "short", "word " * 30, "word " * 31]  # 30 words + [CLS] + [SEP] fit exactly
    path = write_csv(tmp_path / "long.csv", [{"text": t, "label": "a"} for t in texts])
    out = tmp_path / "long.h5"
    run(path, out, tiny_bert, max_length=32)
    with open_cache(out) as cache:
        assert cache.truncated.tolist() == [True, False, False, True]
        assert cache.n_tokens.tolist() == [32, 3, 32, 32]
        assert cache.meta["max_length"] == 32


def test_max_length_is_capped_at_the_position_limit(tmp_path, small_csv, tiny_gpt2):
    out = tmp_path / "g.h5"
    run(small_csv, out, tiny_gpt2, max_length=10_000, poolings=["last"])
    with open_cache(out) as cache:
        assert cache.meta["max_length"] == 64 and cache.meta["model_type"] == "gpt2"
        assert cache.features("last").shape == (10, 3, 32)


def test_token_level_states_in_a_ragged_layout(tmp_path, small_csv, tiny_bert):
    out = tmp_path / "t.h5"
    run(small_csv, out, tiny_bert, tokens=True, token_layers=[0, -1], storage_dtype="float32", block_docs=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    with h5py.File(out, "r") as f:
        offsets = f["tokens/offsets"][()]
        assert f["tokens/layers"][()].tolist() == [0, 2]
        assert offsets[-1] == f["tokens/states"].shape[0] == f["n_tokens"][()].sum()
        states = f["tokens/states"][offsets[4]:offsets[5]]  # (tokens, 2, hidden)
    enc = tokenizer(SENTENCES[4], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(states[:, 0], hidden[0][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(states[:, 1], hidden[2][0].numpy(), atol=1e-5)
    with open_cache(out) as cache:
        np.testing.assert_array_equal(cache.token_states([4])[0], states)
    with pytest.raises(InputError, match="do not exist"):
        run(small_csv, tmp_path / "t2.h5", tiny_bert, tokens=True, token_layers=[7])


def test_sentence_pairs_use_token_type_ids(tmp_path, tiny_bert):
    rows = [{"q": s, "a": SENTENCES[-1 - i], "label": "x"} for i, s in enumerate(SENTENCES[:4])]
    path = write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "p.h5"
    run(path, out, tiny_bert, text_column="q", text_pair_column="a")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    with open_cache(out) as cache:
        assert cache.n_tokens[0] == len(tokenizer(rows[0]["q"], rows[0]["a"])["input_ids"])


def test_blocks_left_by_a_run_with_another_block_size_are_discarded(tmp_path, small_csv, tiny_bert):
    clean = run(small_csv, tmp_path / "clean.h5", tiny_bert, block_docs=4, storage_dtype="float32").path
    with open_cache(clean) as c:
        expected = c.features()
        fingerprints = {k: c.meta[k] for k in ("corpus_fingerprint", "settings_fingerprint")}
    out = tmp_path / "out.h5"
    stale = ShardStore(out, fingerprints, block_docs=2)  # as a killed run with --block-docs 2 leaves it
    for b in range(2):  # rows 0-1 and 2-3; with 4 per block, block 0 is rows 0-3 and block 1 rows 4-7
        stale.save(b, {"pool_mean": np.zeros((2, *expected.shape[1:]), np.float32),
                       "n_tokens": np.zeros(2, np.int32), "truncated": np.zeros(2, bool)})
    run(small_csv, out, tiny_bert, block_docs=4, storage_dtype="float32")
    with open_cache(out) as c:
        np.testing.assert_array_equal(c.features(), expected)


def test_a_max_length_without_room_for_text_is_refused_before_any_model_work(tmp_path, small_csv, tiny_bert):
    for too_short in (1, 2):  # BERT adds [CLS] and [SEP]: 2 tokens would be those alone, 1 not even them
        with pytest.raises(InputError, match=rf"--max-length {too_short} leaves no room for text: .* adds 2 special "
                                             r"tokens to every document, so the least that keeps any text is 3"):
            extract_corpus(str(small_csv), tmp_path / "c.h5", model=str(tiny_bert), max_length=too_short,
                           progress=False)
        assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()
    result = extract_corpus(str(small_csv), tmp_path / "c.h5", model=str(tiny_bert), max_length=3, progress=False)
    with open_cache(result.path) as cache:
        assert cache.n_tokens.max() == 3 and cache.truncated.all()  # every sentence is longer than one token


def test_hidden_states_are_chosen_by_index_every_or_last():
    assert hidden_states(None, 7) == [0, 1, 2, 3, 4, 5, 6]
    assert hidden_states("0,3,-1", 7) == hidden_states([6, 0, 3, 3], 7) == [0, 3, 6]
    assert hidden_states("every:4", 13) == [0, 4, 8, 12] and hidden_states("every:4", 7) == [0, 4, 6]
    assert hidden_states("last:2", 7) == [5, 6] and hidden_states("last:9", 7) == list(range(7))
    for bad in ("7", "every:0", "last:x", "first:2", ","):
        with pytest.raises(InputError, match="--layers takes indices"):
            hidden_states(bad, 7)


def test_a_cache_of_some_hidden_states_equals_those_of_the_full_one_and_a_head_predicts_with_them(
        tmp_path, small_csv, tiny_bert, capsys):
    from finetext.pipeline.cli import main

    full, some = tmp_path / "full.h5", tmp_path / "some.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(full), "-q",
                 "--storage-dtype", "float32"]) == 0
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(some), "--layers", "0,-1",
                 "--storage-dtype", "float32"]) == 0
    said = capsys.readouterr().err
    assert f"{some} will hold about 0.0 MiB of features (10 documents × 2 hidden states × 32 × 4 bytes × 1 pooling)" \
        in said
    with open_cache(full) as a, open_cache(some) as b:
        assert b.meta["hidden_states"] == [0, 2] and b.meta["n_layers"] == 2 and a.meta["hidden_states"] == [0, 1, 2]
        np.testing.assert_array_equal(b.features("mean"), a.features("mean")[:, [0, 2]])
        assert b.meta["settings_fingerprint"] != a.meta["settings_fingerprint"]
    verify_cache(some)
    head = tmp_path / "head"
    assert main(["train", "--train", str(some), "--head", "layer-attention", "-o", str(head), "--quiet"]) == 0
    assert json.loads((head / "config.json").read_text())["feature_info"]["hidden_states"] == [0, 2]
    assert main(["predict", "--head", str(head), "--input", str(small_csv), "-o", str(tmp_path / "p.csv"),
                 "--device", "cpu"]) == 0  # the head's encoder pools the same two hidden states
    from finetext.classify import load_head

    with open_cache(some) as b:
        expected = load_head(head).predict_proba(b.features("mean"))
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    got = np.array([[float(r[f"p_{c}"]) for c in load_head(head).classes_] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)

