"""The HDF5 cache: the contract between extract and classify. Its layout is documented in docs/cache-format.md.

Writing is crash safe in two layers. While encoding, each completed block of documents is saved as its own
.npz shard in `CACHE.h5.partial/`, published with `os.replace`, so a killed run keeps every finished block
and resumes after the last one. At the end the shards are copied into a temporary HDF5 file with large
contiguous writes and published over the destination with `os.replace`. The destination is never opened
for writing.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from finetext.extract.errors import CacheFormatError, CacheMismatchError, InputError

FORMAT = "finetext-cache"
SCHEMA_VERSION = 2  # 2: the checksums attribute; version-1 caches are read, their metadata unchecked
FEATURES_VERSION = 1  # how features are computed and laid out: part of a cache's settings fingerprint
# what h5py raises, in one form or another, when HDF5's own structures in a file are damaged
DAMAGED = (OSError, RuntimeError, ValueError, KeyError, TypeError, UnicodeDecodeError)
CHECKSUMS = "checksums"  # JSON: name -> sha256 of every other attribute, the label names, the ids and the labels
POOLINGS = ("mean", "cls", "last", "max")  # the pooled arrays a cache can hold, features/<pooling>, in this order
ID_ROWS = 65536  # ids written per slice
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: small enough for row subsets, large enough for fast scans
_JSON_ATTRS = ("poolings", "token_layers", "hidden_states", "library_versions", "corpus", "skipped", "settings")


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


# --- shards (the resumable part) ------------------------------------------------------------------------

class ShardStore:
    """Completed blocks of a run in progress, one .npz each, tied to the run's fingerprints and block size
    (the manifest): a run with another corpus, other settings or another block size starts over."""

    def __init__(self, output: Path, fingerprints: dict[str, Any], block_docs: int,
                 request: dict[str, Any] | None = None) -> None:
        self.dir = partial_dir(output)
        expected = {**fingerprints, "block_docs": block_docs}
        if self.dir.exists() and _read_json(self.dir / "manifest.json") != expected:  # their blocks are not this run's: useless
            shutil.rmtree(self.dir, ignore_errors=True)  # (another shard of this run may be removing it too)
        if not self.dir.exists():  # made whole, then renamed: shards of one run starting together see one manifest
            staging = output.with_name(f".{output.name}.staging-shards{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            _atomic_write_text(staging / "manifest.json", json.dumps(expected, indent=1, sort_keys=True))
            if request is not None:
                _atomic_write_text(staging / "request.json", json.dumps(request, indent=1, sort_keys=True))
            try:
                os.rename(staging, self.dir)
            except OSError:  # another shard of this run made it first
                shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def request(output: Path) -> dict[str, Any] | None:
        """What the sharded run writing `output` was asked (the corpus and settings), for `finetext merge`."""
        return _read_json(partial_dir(output) / "request.json")

    def path(self, block: int) -> Path:
        return self.dir / f"block-{block:06d}.npz"

    def done(self, block: int) -> bool:
        return self.path(block).exists()

    def save(self, block: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.dir / f".block-{block:06d}.{os.getpid()}.tmp.npz"
        check_free_space(tmp, sum(a.nbytes for a in arrays.values()) + SLACK_BYTES, f"block {block}")
        try:
            np.savez(tmp, **arrays)
            _fsync(tmp)
            os.replace(tmp, self.path(block))
        except OSError as exc:  # name the file (numpy does not), and leave no half block behind
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror or str(exc), str(tmp)) from None

    def load(self, block: int) -> dict[str, np.ndarray]:
        with np.load(self.path(block), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def discard(output: Path) -> None:
        """Remove the shards of `output`, if any are left (the file they were for is published)."""
        shutil.rmtree(partial_dir(output), ignore_errors=True)


SLACK_BYTES = 1 << 20  # room kept above what a write needs, for HDF5's own structures and the filesystem's


def check_free_space(path: Path, needed: int, what: str) -> None:
    """Raise OSError(ENOSPC) naming `path`, the bytes `what` needs and the bytes free, before writing: HDF5 hitting
    a full disk mid-write can crash the process instead of raising."""
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: {what} needs {needed:,} bytes and {free:,} are free",
                      str(path))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _read_json(path: Path) -> Any:
    """A JSON file's value; None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- assembling the final file --------------------------------------------------------------------------

def _chunk_rows(row_bytes: int, n_rows: int) -> int:
    return max(1, min(n_rows, CHUNK_BYTES // max(row_bytes, 1)))


def write_cache(
    output: Path,
    shards: ShardStore,
    n_blocks: int,
    attrs: dict[str, Any],
    ids: Sequence[str],
    labels: np.ndarray,
    label_names: Sequence[str],
) -> None:
    """Copy every shard into a new HDF5 file beside `output`, then publish it with os.replace."""
    n_docs = len(ids)
    first = shards.load(0)
    poolings = attrs["poolings"]
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    needed = sum(shards.path(b).stat().st_size for b in range(n_blocks)) + sum(len(i) + 16 for i in ids)
    check_free_space(tmp, needed + 8 * len(ids) + SLACK_BYTES, "the cache file")
    stored = {key: json.dumps(value) if key in _JSON_ATTRS else ("" if value is None else value)
              for key, value in attrs.items()}
    sums = checksums(stored, list(label_names), ids, labels)
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in stored.items():
                f.attrs[key] = value
            f.attrs[CHECKSUMS] = json.dumps(sums, sort_keys=True)
            feats = f.create_group("features")
            dsets = {}
            for name in poolings:
                row_shape = first[f"pool_{name}"].shape[1:]  # (layers, hidden)
                row_bytes = int(np.prod(row_shape)) * first[f"pool_{name}"].itemsize
                dsets[f"pool_{name}"] = feats.create_dataset(
                    name, shape=(n_docs, *row_shape), dtype=first[f"pool_{name}"].dtype,
                    chunks=(_chunk_rows(row_bytes, n_docs), *row_shape), fletcher32=True)
            dsets["n_tokens"] = f.create_dataset("n_tokens", (n_docs,), "int32", fletcher32=True, chunks=True)
            dsets["truncated"] = f.create_dataset("truncated", (n_docs,), "bool", fletcher32=True, chunks=True)
            f.create_dataset("labels", data=labels.astype(np.int32), fletcher32=True, chunks=True)
            f.create_dataset("label_names", data=list(label_names), dtype=h5py.string_dtype())
            id_set = f.create_dataset("ids", shape=(n_docs,), dtype=h5py.string_dtype())  # vlen: no filters
            for start in range(0, n_docs, ID_ROWS):  # a slice at a time: no list of every id at once
                id_set[start:start + ID_ROWS] = ids[start:start + ID_ROWS]
            token_states = None
            if "token_states" in first:
                lengths = np.concatenate([shards.load(b)["token_lengths"] for b in range(n_blocks)])
                offsets = np.zeros(n_docs + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                tok = f.create_group("tokens")
                tok.create_dataset("offsets", data=offsets, fletcher32=True, chunks=True)
                tok.create_dataset("layers", data=np.asarray(attrs["token_layers"], dtype=np.int32), fletcher32=True,
                                   chunks=True)
                row_shape = first["token_states"].shape[1:]  # (token_layers, hidden)
                row_bytes = int(np.prod(row_shape)) * first["token_states"].itemsize
                total = int(offsets[-1])
                token_states = tok.create_dataset(
                    "states", shape=(total, *row_shape), dtype=first["token_states"].dtype,
                    chunks=(_chunk_rows(row_bytes, max(total, 1)), *row_shape), fletcher32=True)
            row = tok_row = 0
            for block in range(n_blocks):
                arrays = first if block == 0 else shards.load(block)
                n = len(arrays["n_tokens"])
                for key, dset in dsets.items():
                    dset[row:row + n] = arrays[key]  # one contiguous write per block and array
                if token_states is not None:
                    t = len(arrays["token_states"])
                    token_states[tok_row:tok_row + t] = arrays["token_states"]
                    tok_row += t
                row += n
            if row != n_docs:
                raise CacheFormatError(f"shards hold {row} documents, the corpus {n_docs}; rerun with --force.")
        _fsync(tmp)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- checksums over the metadata ---------------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_strings(values: Iterable[str]) -> str:
    """sha256 of the strings length-prefixed in UTF-8 (no two different lists encode alike), fed one at a time."""
    h = hashlib.sha256()
    for value in values:
        data = value.encode("utf-8", errors="surrogateescape")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def checksums(stored: dict[str, Any], label_names: Sequence[str], ids: Sequence[str] | None = None,
              labels: np.ndarray | None = None) -> dict[str, str]:
    """name -> sha256 of each attribute as stored (JSON text for the structured ones), "label_names" and, when
    given, "ids" and "labels". Every byte that changes what a cache means is covered: its features by HDF5's
    fletcher32 chunks, the rest by these."""
    sums = {f"attr:{key}": _sha(json.dumps(value, sort_keys=True).encode()) for key, value in stored.items()}
    sums["label_names"] = _sha_strings(label_names)
    if ids is not None:
        sums["ids"] = _sha_strings(ids)
    if labels is not None:
        sums["labels"] = _sha(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    return sums


def _stored_attrs(f: h5py.File) -> dict[str, Any]:
    return {key: value.item() if isinstance(value, np.generic) else value
            for key, value in f.attrs.items() if key != CHECKSUMS}


def check_checksums(f: h5py.File, path: Path, rows: bool) -> bool:
    """Compare the cache's checksums with its contents: the attributes and label names always, the ids and labels
    when `rows` (they are large: verify reads them). A mismatch is a CacheFormatError naming what differs. False
    for a version-1 cache, which has none."""
    if CHECKSUMS not in f.attrs:
        if f.attrs.get("schema_version") != 1:  # a version-2 file lost it (or the version itself was changed)
            raise CacheFormatError(f"{path}: its checksums attribute is missing, though schema version "
                                   f"{f.attrs.get('schema_version')!r} records one. The file was changed after "
                                   "finetext wrote it; rebuild it with `finetext extract --force`.")
        return False
    fix = "The file was changed after finetext wrote it; rebuild it with `finetext extract --force`."
    try:
        recorded = json.loads(f.attrs[CHECKSUMS])
    except (TypeError, ValueError):
        raise CacheFormatError(f"{path}: its checksums attribute is not valid JSON. {fix}") from None
    names = [s.decode() if isinstance(s, bytes) else s for s in f["label_names"][()]] if "label_names" in f else []
    ids = [s.decode(errors="surrogateescape") for s in f["ids"][()]] if rows and "ids" in f else None
    labels = f["labels"][()] if rows and "labels" in f else None
    actual = checksums(_stored_attrs(f), names, ids, labels)
    asked = {k for k in recorded if rows or k not in ("ids", "labels")}
    differ = sorted(k.removeprefix("attr:") for k in asked | {k for k in actual if k.startswith("attr:")}
                    if recorded.get(k) != actual.get(k))
    if differ:
        raise CacheFormatError(f"{path}: {', '.join(differ)} {'does' if len(differ) == 1 else 'do'} not match the "
                               f"checksum recorded when it was written. {fix}")
    return True


# --- reading --------------------------------------------------------------------------------------------

def read_attrs(path: Path) -> dict[str, Any]:
    """The cache's metadata as plain Python values. Raises CacheFormatError for other files."""
    try:
        with h5py.File(path, "r") as f:
            return _decode_attrs(f)
    except OSError as exc:
        raise CacheFormatError(f"{path}: not a readable HDF5 file ({exc}).") from None


def _decode_attrs(f: h5py.File) -> dict[str, Any]:
    if f.attrs.get("format") != FORMAT:
        raise CacheFormatError(
            f"{f.filename}: not a finetext cache (attribute format={f.attrs.get('format')!r}, expected "
            f"{FORMAT!r}). Build one with `finetext extract`."
        )
    meta: dict[str, Any] = {}
    for key, value in _stored_attrs(f).items():
        if key in _JSON_ATTRS:
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                raise CacheFormatError(f"{f.filename}: attribute {key!r} is not valid JSON. The file was changed "
                                       "after finetext wrote it; rebuild it with `finetext extract --force`.") from None
        meta[key] = value
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise CacheFormatError(
            f"{f.filename}: schema version {meta['schema_version']} is newer than this finetext reads "
            f"({SCHEMA_VERSION}). Upgrade finetext."
        )
    return meta


def _take(dset: h5py.Dataset, rows: Iterable[int] | np.ndarray | None) -> np.ndarray:
    """dset[rows] for any order and duplicates (h5py wants sorted unique indices)."""
    if rows is None:
        return dset[()]
    rows = np.asarray(rows, dtype=np.int64)
    n = dset.shape[0]
    if rows.ndim != 1:
        raise IndexError(f"rows: expected a 1-D sequence of row numbers, got shape {rows.shape}.")
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise IndexError(f"rows: indices must lie in [-{n}, {n}), got {rows.min()}..{rows.max()}.")
    rows = rows % n if n else rows
    unique, inverse = np.unique(rows, return_inverse=True)
    if unique.size == 0:
        return np.empty((0, *dset.shape[1:]), dtype=dset.dtype)
    return dset[unique][inverse]


class Cache:
    """A finetext cache opened for reading; arrays load lazily. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheFormatError(f"{self.path}: not a readable HDF5 file ({exc}).") from None
        try:
            self.meta: dict[str, Any] = _decode_attrs(self._file)
            self.checked = check_checksums(self._file, self.path, rows=False)  # attributes and label names
        except CacheFormatError:
            self._file.close()
            raise
        except DAMAGED as exc:
            self._file.close()
            raise CacheFormatError(f"{self.path}: the file is damaged ({' '.join(str(exc).split())[:160]}); rebuild "
                                   "it with `finetext extract --force`.") from None
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def poolings(self) -> list[str]:
        return list(self.meta["poolings"])

    @property
    def label_names(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._file["label_names"][()]]

    @property
    def labels(self) -> np.ndarray:
        """(n_docs,) int32 index into label_names; -1 for an unlabeled document."""
        return self._file["labels"][()]

    def label_strings(self) -> np.ndarray:
        """(n_docs,) label names as str. Refuses unlabeled documents: label -1 would index the last name."""
        labels = self.labels
        if (labels < 0).any():
            raise InputError(f"{self.path}: {int((labels < 0).sum())} documents have no label; this needs a "
                             "labelled cache (extract it with --label-column).")
        return np.array(self.label_names, dtype=object)[labels].astype(str)

    @property
    def ids(self) -> list[str]:
        return [s.decode() for s in self._file["ids"][()]]

    @property
    def n_tokens(self) -> np.ndarray:
        return self._file["n_tokens"][()]

    @property
    def truncated(self) -> np.ndarray:
        return self._file["truncated"][()]

    def features(self, pooling: str = "mean", rows: Sequence[int] | np.ndarray | None = None,
                 layers: Sequence[int] | None = None, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Pooled features (n_rows, n_layers, hidden), rows in the order asked (duplicates allowed)."""
        if pooling not in self.poolings:
            raise CacheMismatchError(
                f"{self.path}: no {pooling!r} pooling; this cache has {', '.join(self.poolings)}. "
                f"Use --pooling {self.poolings[0]}, or re-run extract with --pooling {pooling}."
            )
        dset = self._file["features"][pooling]
        n_layers = dset.shape[1]
        if layers is not None and not all(-n_layers <= int(layer) < n_layers for layer in layers):
            raise CacheMismatchError(f"{self.path}: layers {list(layers)} asked for; this cache has hidden states "
                                     f"0 to {n_layers - 1}. Choose --layers among those.")
        out = _take(dset, rows)  # (rows, layers, hidden)
        if layers is not None:
            out = out[:, list(layers)]
        return out.astype(dtype, copy=False)

    @property
    def has_tokens(self) -> bool:
        return "tokens" in self._file

    def token_states(self, rows: Sequence[int] | np.ndarray | None = None,
                     dtype: np.dtype | type = np.float32) -> list[np.ndarray]:
        """Token-level states, one (n_tokens_i, n_token_layers, hidden) array per asked row."""
        if not self.has_tokens:
            raise CacheMismatchError(f"{self.path}: no token-level states; re-run extract with --tokens.")
        offsets = self._file["tokens/offsets"][()]
        states = self._file["tokens/states"]
        rows = range(self.n_docs) if rows is None else rows
        return [states[offsets[r]:offsets[r + 1]].astype(dtype, copy=False) for r in rows]


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a finetext cache for reading."""
    return Cache(path)


def verify_cache(path: str | os.PathLike) -> list[str]:
    """Read every chunk (fletcher32 checksums) and check the metadata against the arrays.

    Returns a list of findings, one line each; raises CacheFormatError on the first failure.
    """
    path = Path(path)
    try:
        return _verify(path)
    except CacheFormatError:
        raise
    except DAMAGED as exc:
        raise CacheFormatError(f"{path}: the file is damaged ({' '.join(str(exc).split())[:160]}); rebuild it with "
                               "`finetext extract --force`.") from None


def _verify(path: Path) -> list[str]:
    found: list[str] = []
    with open_cache(path) as cache:
        f = cache._file
        meta = cache.meta
        n = cache.n_docs
        required = ["labels", "label_names", "ids", "n_tokens", "truncated"] + [
            f"features/{p}" for p in cache.poolings]
        for name in required:
            if name not in f:
                raise CacheFormatError(f"{path}: dataset {name!r} is missing; rebuild with `finetext extract --force`.")
        for name in required:
            dset = f[name]
            if dset.shape[0] != (len(cache.label_names) if name == "label_names" else n):
                raise CacheFormatError(f"{path}: {name} has {dset.shape[0]} rows, the metadata says {n}.")
        for pooling in cache.poolings:
            dset = f[f"features/{pooling}"]
            expected = (n, meta["n_layers"], meta["hidden_size"])
            if dset.shape != expected:
                raise CacheFormatError(f"{path}: features/{pooling} has shape {dset.shape}, expected {expected}.")
        datasets = [f[name] for name in required]
        if cache.has_tokens:
            datasets += [f["tokens/offsets"], f["tokens/states"]]
        for dset in datasets:
            _check_chunks_stored(path, dset)
            step = dset.chunks[0] if dset.chunks else max(dset.shape[0], 1)
            bad = 0
            for start in range(0, dset.shape[0], step * 16):
                try:
                    block = dset[start:start + step * 16]
                except OSError as exc:
                    raise CacheFormatError(
                        f"{path}: {dset.name} rows {start}..{start + step * 16} fail their checksum ({exc}). "
                        "The file is corrupted; rebuild it with `finetext extract --force`."
                    ) from None
                if block.dtype.kind == "f":
                    bad += int(np.size(block) - np.isfinite(block).sum())
            if bad:
                found.append(f"warning: {dset.name} holds {bad} non-finite values (fp16 overflow?)")
        labels = cache.labels
        if labels.size and (labels.max() >= len(cache.label_names) or labels.min() < -1):
            raise CacheFormatError(f"{path}: labels outside [-1, {len(cache.label_names)}).")
        if cache.has_tokens:
            offsets = f["tokens/offsets"][()]
            if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != f["tokens/states"].shape[0]:
                raise CacheFormatError(f"{path}: tokens/offsets are not increasing from 0 to the token count.")
            if not np.array_equal(np.diff(offsets), cache.n_tokens):
                raise CacheFormatError(f"{path}: token offsets disagree with n_tokens.")
        if check_checksums(f, Path(path), rows=True):
            found.append(f"ok: {n} documents, {len(datasets)} datasets read, every checksum matches (features, "
                         "attributes, label names, ids and labels)")
        else:
            found.append(f"ok: {n} documents, {len(datasets)} datasets read, every feature checksum matches; "
                         f"warning: schema v{meta.get('schema_version')} records no checksums of its metadata, "
                         "which is unchecked (`finetext extract --force` rebuilds it with them)")
    return found


def _check_chunks_stored(path: Path, dset: h5py.Dataset) -> None:
    """Every chunk of a written dataset is stored. A damaged chunk index can make HDF5 treat a chunk as never
    written and read its fill value (zeros) without running its checksum filter; reading each chunk's stored
    bytes directly finds that."""
    if not dset.chunks or 0 in dset.shape:
        return
    for coord in itertools.product(*(range(0, n, c) for n, c in zip(dset.shape, dset.chunks))):
        try:
            dset.id.read_direct_chunk(coord)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CacheFormatError(
                f"{path}: {dset.name} rows {coord[0]}..{coord[0] + dset.chunks[0]} cannot be read from the file "
                f"({' '.join(str(exc).split())[:120]}). The file is corrupted; rebuild it with `finetext extract "
                "--force`.") from None


def describe_cache(path: str | os.PathLike) -> str:
    """A human-readable summary of what a cache holds (for `finetext info`)."""
    with open_cache(path) as cache:
        m = cache.meta
        labels = cache.labels
        counts = np.bincount(labels[labels >= 0], minlength=len(cache.label_names))
        size = Path(path).stat().st_size
        lines = [
            f"{path}  ({size / 2**20:.1f} MiB, schema v{m['schema_version']}, created {m['created']})",
            f"documents   {cache.n_docs}  ({int(cache.truncated.sum())} truncated at {m['max_length']} tokens, "
            f"mean {float(cache.n_tokens.mean()):.1f} tokens)",
            f"features    {', '.join(cache.poolings)} pooling: ({cache.n_docs}, {m['n_layers']}, "
            f"{m['hidden_size']}) {m['storage_dtype']}",
            f"model       {m['model_id']}  revision={m['model_revision'] or '-'}  type={m['model_type']}",
            f"            weights sha256={m['weights_sha256'] or '-'}",
            f"            computed in {m['compute_dtype']} on {m['device']}",
            f"labels      {len(cache.label_names)}: "
            + ", ".join(f"{name} ({c})" for name, c in zip(cache.label_names, counts)),
            f"corpus      {m['corpus']['source']}  fingerprint {m['corpus_fingerprint'][:16]}",
            f"settings    fingerprint {m['settings_fingerprint'][:16]}",
        ]
        if cache.has_tokens:
            lines.append(f"tokens      layers {m['token_layers']}, {cache._file['tokens/states'].shape[0]} rows")
        if m.get("skipped"):
            lines.append(f"skipped     {m['skipped']}")
        return "\n".join(lines)
