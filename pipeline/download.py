"""Fetching a registered dataset once: download, check its sha256, convert to CSV, publish with os.replace.

A split's `source` in pipeline/registry.json names a published file (`url`, its `sha256` and `bytes`), the
`member` to read when it is an archive, and the `format` that turns it into finetext's CSV (header
`text,label`, RFC 4180 quoting, UTF-8). Downloads land in `DATA/<name>/downloads/` and are checked before
anything reads them; converted splits whose sha256 the registry records are checked too. Nothing is
half-written at a destination: every file is written beside it and published with os.replace.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tarfile
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from finetext.extract import InputError

TIMEOUT_S = 30


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_name(url: str) -> str:
    """The file name a download is kept under in DATA/<name>/downloads/."""
    return url.rsplit("/", 1)[-1]


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def download(url: str, dest: Path, sha256: str, size: int | None = None, progress: bool = True) -> Path:
    """`url` to `dest` unless a file with the right sha256 is there already; a wrong one is never kept."""
    if dest.exists() and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out, \
                tqdm(total=size, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not progress,
                     dynamic_ncols=True) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        if h.hexdigest() != sha256:
            raise InputError(f"{url}: the download's sha256 is {h.hexdigest()}, the registry's {sha256}; the "
                             "published file changed or the transfer broke. Nothing was kept; try again, or put the "
                             f"original file at {dest}.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --- formats: published file -> rows (text, label) ----------------------------------------------------------

def _lines(path: Path, member: str | None) -> Iterator[bytes]:
    if member is None:
        with open(path, "rb") as f:
            yield from f
    else:
        with tarfile.open(path) as tar:
            f = tar.extractfile(member)
            if f is None:
                raise InputError(f"{path}: no file {member} in the archive.")
            yield from f


def _trec(path: Path, member: str | None, label_names: list[str] | None,
          fine: bool = False) -> Iterator[tuple[str, str]]:
    """`COARSE:fine question` per line, labelled COARSE (TREC-6) or `fine` COARSE:fine (TREC-50); the one
    non-UTF-8 byte (0xF0) is a space, as in Hugging Face's loader."""
    for line in _lines(path, member):
        label, text = line.replace(b"\xf0", b" ").decode("utf-8").split(" ", 1)
        yield text.strip(), label if fine else label.split(":")[0]


def _stsa(path: Path, member: str | None, label_names: list[str] | None) -> Iterator[tuple[str, str]]:
    """`LABEL sentence` per line (Kim 2014's SST binary files)."""
    for line in _lines(path, member):
        label, text = line.decode("utf-8").rstrip("\r\n").split(" ", 1)
        yield text, label


def _zhang_csv(path: Path, member: str | None, label_names: list[str] | None) -> Iterator[tuple[str, str]]:
    """Zhang et al. (2015)'s CSVs: no header, a 1-based class index, then title and body (or the body alone);
    newlines inside a text are written as a literal backslash-n."""
    text_lines = (line.decode("utf-8") for line in _lines(path, member))
    for row in csv.reader(text_lines):
        index, fields = int(row[0]), [f.replace("\\n", "\n").strip() for f in row[1:]]
        yield " ".join(f for f in fields if f), label_names[index - 1] if label_names else str(index)


def _aclimdb(path: Path, member: str | None, label_names: list[str] | None) -> Iterator[tuple[str, str]]:
    """Maas et al. (2011)'s archive: one review per .txt file under MEMBER/pos and MEMBER/neg (in name order)."""
    reviews = []  # read in archive order: a gzip stream cannot seek back cheaply
    with tarfile.open(path) as tar:
        for m in tar:
            parts = m.name.rsplit("/", 2)  # MEMBER, label, file
            if m.isfile() and m.name.endswith(".txt") and parts[:-1] in ([member, "neg"], [member, "pos"]):
                reviews.append((m.name, tar.extractfile(m).read().decode("utf-8").strip(), parts[1]))
    for _, text, label in sorted(reviews):
        yield text, label


FORMATS: dict[str, Callable[[Path, str | None, list[str] | None], Iterator[tuple[str, str]]]] = {
    "trec": _trec, "trec-fine": partial(_trec, fine=True), "stsa": _stsa, "zhang-csv": _zhang_csv, "aclimdb": _aclimdb}


def _write_rows(rows: Iterator[tuple[str, str]], dest: Path, expected_rows: int | None = None) -> None:
    """The rows as finetext's CSV at `dest`, published only when there are `expected_rows` of them."""
    tmp = _tmp(dest)
    try:
        n = 0
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)  # RFC 4180: QUOTE_MINIMAL, CRLF
            writer.writerow(["text", "label"])
            for n, row in enumerate(rows, 1):
                writer.writerow(row)
        if expected_rows is not None and n != expected_rows:
            raise InputError(f"{dest}: the conversion gave {n} rows, the registry says {expected_rows}; nothing was "
                             "published. Report it: the converter and the published file disagree.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, split: str, entry: dict[str, Any], root: Path, progress: bool = True) -> Path:
    """Download (once) and convert one split of a registered dataset into root/name/; returns the file."""
    info = entry["splits"][split]
    source = info["source"]
    folder = root / name
    dest = folder / info["file"]
    raw = download(source["url"], folder / "downloads" / download_name(source["url"]), source["sha256"],
                   source.get("bytes"), progress)
    fmt = source.get("format", "copy")
    if fmt == "copy":
        tmp = _tmp(dest)
        try:
            shutil.copyfile(raw, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        _write_rows(FORMATS[fmt](raw, source.get("member"), entry.get("label_names")), dest, info.get("rows"))
    if info.get("sha256") and sha256_of(dest) != info["sha256"]:
        bad = dest.with_name(dest.name + ".rejected")
        os.replace(dest, bad)
        raise InputError(f"{name} ({split}): converting {raw.name} gave a file whose sha256 differs from the "
                         f"registry's {info['sha256']} (kept as {bad} for inspection). Report it: the converter and "
                         "the registry disagree.")
    return dest


__all__ = ["FORMATS", "download", "download_name", "fetch", "sha256_of"]
