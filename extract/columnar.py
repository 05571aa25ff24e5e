"""Parquet files and Arrow dataset folders (Hugging Face `datasets`' `save_to_disk`) as corpora, streamed in
record batches with pyarrow: only the columns asked for are read, and never the whole table at once.

An Arrow dataset folder holds `state.json` (its data files, in order), `dataset_info.json` (its features) and
`data-*.arrow` files in Arrow's streaming format. A label column of `ClassLabel` feature is read as its class names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from finetext.extract.errors import InputError

BATCH_ROWS = 4096  # rows per record batch read: memory stays flat however large the file


def is_arrow_folder(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def refuse_dataset_dict(path: Path) -> None:
    """A folder written by DatasetDict.save_to_disk holds one Arrow folder per split: name the one to pass."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise InputError(f"{path} holds a DatasetDict (splits {', '.join(splits)}), not one dataset; pass one "
                         f"split's folder, e.g. {path / (splits[0] if splits else 'train')}.")


def column_names(path: Path, kind: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names if kind == "parquet" else _arrow_schema(path).names)
    except pa.ArrowException as exc:
        what = "Parquet file" if kind == "parquet" else "saved dataset"
        raise InputError(f"{path}: not a readable {what} ({exc}); write it again, or convert it to CSV.") from None


def iter_rows(path: Path, kind: str, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, {column: value}) for every row, reading only `columns` that the file has."""
    present = [c for c in dict.fromkeys(columns) if c in column_names(path, kind)]
    names = _class_names(path) if kind == "arrow" else {}
    row = 0
    for batch in _batches(path, kind, present):
        for fields in batch.to_pylist():
            row += 1
            for column, classes in names.items():  # ClassLabel: an index into its names (-1: no label)
                value = fields.get(column)
                if isinstance(value, int) and 0 <= value < len(classes):
                    fields[column] = classes[value]
                elif isinstance(value, int):
                    fields[column] = None
            yield row, fields


def _batches(path: Path, kind: str, columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        return
    for file in _arrow_files(path):
        with pa.memory_map(str(file), "r") as source:
            for batch in pa.ipc.open_stream(source):
                yield batch.select(columns)


def _arrow_files(path: Path) -> list[Path]:
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}/state.json does not list the dataset's data files; save the dataset again with "
                         "`dataset.save_to_disk(folder)`.") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{path}: data files {missing} listed in state.json are missing; save the dataset again.")
    return files


def _arrow_schema(path: Path):
    import pyarrow as pa

    files = _arrow_files(path)
    if not files:
        raise InputError(f"{path}: the dataset has no data files; it is empty.")
    with pa.memory_map(str(files[0]), "r") as source:
        return pa.ipc.open_stream(source).schema


def _class_names(path: Path) -> dict[str, list[str]]:
    """column -> class names, for the columns whose feature is a ClassLabel."""
    try:
        features = json.loads((path / "dataset_info.json").read_text()).get("features") or {}
    except ValueError:
        return {}
    return {name: [str(n) for n in feature["names"]] for name, feature in features.items()
            if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names")}
