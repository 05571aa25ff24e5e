"""Parquet files and `datasets` folders as corpora: the same documents as a CSV, streamed, with clear errors."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetext.extract.corpus import CorpusSpec, iter_records, scan
from finetext.extract.errors import InputError
from tests.conftest import LABELS, SENTENCES, write_csv


def records(spec):
    return [(r.id, r.text, r.label) for r in iter_records(spec)]


def test_parquet_reads_the_documents_of_the_same_csv_in_batches(tmp_path, monkeypatch):
    import finetext.extract.columnar as columnar

    csv_path = write_csv(tmp_path / "c.csv", [{"text": t, "label": label} for t, label in zip(SENTENCES, LABELS)])
    pq.write_table(pa.table({"text": SENTENCES, "label": LABELS, "unused": list(range(10))}), tmp_path / "c.parquet",
                   row_group_size=3)
    monkeypatch.setattr(columnar, "BATCH_ROWS", 4)  # several batches and row groups
    parquet = CorpusSpec(str(tmp_path / "c.parquet"))
    assert parquet.kind == "parquet"
    assert records(parquet) == records(CorpusSpec(str(csv_path)))
    assert scan(parquet).fingerprint == scan(CorpusSpec(str(csv_path))).fingerprint  # content, not format


def test_a_saved_datasets_folder_reads_its_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=sorted(set(LABELS)))})
    names = sorted(set(LABELS))
    ds = datasets.Dataset.from_dict({"sentence": SENTENCES, "label": [names.index(x) for x in LABELS]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    spec = CorpusSpec(str(tmp_path / "ds"), text_column="sentence")
    assert spec.kind == "arrow"
    assert [(t, label) for _, t, label in records(spec)] == list(zip(SENTENCES, LABELS))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"holds a DatasetDict \(splits train, test\), not one dataset; pass one "
                                         r"split's folder, e.g. .*dd/train"):
        CorpusSpec(str(tmp_path / "dd")).kind


def test_columnar_errors_name_the_columns_and_rows(tmp_path):
    pq.write_table(pa.table({"body": ["a", None, " "], "label": ["x", "y", "x"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"no text column 'text' \(row 1\); the columns are 'body', 'label'\. "
                                         r"Pass --text-column NAME"):
        scan(CorpusSpec(str(tmp_path / "c.parquet")))
    with pytest.raises(InputError, match=r"missing text: row 2\..*\n  empty or whitespace-only text: row 3"):
        scan(CorpusSpec(str(tmp_path / "c.parquet"), text_column="body"))
