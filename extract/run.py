"""`extract_corpus`: text in, HDF5 cache of every layer's pooled hidden states out (resumable, atomic)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from finetext.extract.batching import pad_right, token_budget_batches
from finetext.extract.cache import (FEATURES_VERSION, FORMAT, POOLINGS, SCHEMA_VERSION, SLACK_BYTES, ShardStore,
                                    check_free_space, partial_dir, read_attrs, write_cache)
from finetext.extract.corpus import CorpusSpec, CorpusSummary, Record, iter_records, scan
from finetext.extract.encoder import COMPUTE_DTYPES, ModelInfo, describe_model, load_model, resolve_device, resolve_model
from finetext.extract.errors import CacheFormatError, CacheMismatchError, InputError
from finetext.extract.outputs import check_output, exclusive, remove_leftovers
from finetext.extract.pooling import pool
from finetext.extract.tokens import check_max_length, tokenize

STORAGE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ExtractSettings:
    """How to encode. Every field but device, batch_tokens and block_docs is part of the cache fingerprint."""

    model: str | None = None  # hub name or local folder; None: the packaged all-MiniLM-L6-v2
    revision: str | None = None  # hub branch, tag or commit
    poolings: tuple[str, ...] = ("mean",)
    max_length: int | None = None  # tokens per document; None: the model's position limit
    device: str = "auto"  # auto | cpu | cuda | mps
    compute_dtype: str = "fp32"  # fp32 | bf16 | fp16
    storage_dtype: str = "float16"  # float16 | float32
    tokens: bool = False  # also keep token-level states (ragged)
    token_layers: tuple[int, ...] | None = None  # hidden states kept at token level; None: all
    batch_tokens: int | None = None  # padded tokens per forward pass; None: 4096 on CPU, 16384 on a GPU
    block_docs: int | None = None  # documents per resumable block; None: 4096 (128 with tokens)
    layers: str | tuple[int, ...] | None = None  # hidden states kept in the pooled cache: "0,6,12", "every:4",
    # "last:8" or indices (hidden_states resolves them); None: all

    def __post_init__(self) -> None:
        bad = [p for p in self.poolings if p not in POOLINGS]
        if bad or not self.poolings:
            raise InputError(f"pooling: expected a comma-separated subset of {','.join(POOLINGS)}, got "
                             f"{','.join(self.poolings) or 'nothing'}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise InputError(f"compute dtype: expected one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}.")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise InputError(f"storage dtype: expected one of {', '.join(STORAGE_DTYPES)}, got {self.storage_dtype!r}.")
        for name in ("max_length", "batch_tokens", "block_docs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name.replace('_', '-')}: expected a positive integer, got {value}.")
        if self.token_layers is not None and not self.tokens:
            raise InputError("token layers were given without --tokens; add --tokens or drop --token-layers.")

    @property
    def ordered_poolings(self) -> list[str]:
        return [p for p in POOLINGS if p in self.poolings]

    @property
    def docs_per_block(self) -> int:
        # documents are length-sorted within a block: on all of TREC-6 + BBC News, blocks of 2,048 padded 2.3%
        # more tokens than one sort of the whole corpus, blocks of 4,096 0.5%
        return self.block_docs or (128 if self.tokens else 4096)


@dataclass(frozen=True)
class ExtractResult:
    path: Path
    status: str  # "created", "resumed" or "up to date"
    n_docs: int
    seconds: float


def library_versions() -> dict[str, str]:
    import h5py
    import transformers

    return {"finetext": _finetext_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__}


def _finetext_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("finetext")
    except PackageNotFoundError:
        return "unknown"


def settings_identity(settings: ExtractSettings, info: ModelInfo, max_length: int, n_layers: int,
                      subset: list[int] | None = None) -> dict:
    """Everything that changes the cached numbers; its sha256 is the settings fingerprint."""
    return {
        "schema_version": FEATURES_VERSION,  # the features' version: caches of schema 1 and 2 hold the same numbers
        # a local model is its weights; a hub model is its name at a revision
        "model": info.weights_sha256 or [info.model_id, info.revision],
        "tokenizer": info.tokenizer_sha256,
        "max_length": max_length,
        "poolings": settings.ordered_poolings,
        "compute_dtype": settings.compute_dtype,
        "storage_dtype": settings.storage_dtype,
        "token_layers": _token_layers(settings, n_layers),
        # a subset of hidden states only where one was asked: caches of every state keep their fingerprints
        **({"hidden_states": subset} if subset else {}),
    }


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def hidden_states(layers: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """The model's hidden states (0 = the embeddings) a cache keeps: all for None; "every:K" every K-th from 0 and the
    last; "last:K" the last K; or indices, negative ones from the end. Sorted, each once."""
    spec = ",".join(map(str, layers)) if isinstance(layers, (list, tuple)) else layers
    fix = ("--layers takes indices (0,6,12; -1 is the last), every:K or last:K, within the model's hidden states "
           f"0..{n_layers - 1}")
    if spec is None:
        return list(range(n_layers))
    kind, _, count = spec.partition(":")
    try:
        if kind in ("every", "last"):
            k = int(count)
            if k < 1:
                raise ValueError
            chosen = (list(range(0, n_layers, k)) + [n_layers - 1]) if kind == "every" else \
                list(range(max(n_layers - k, 0), n_layers))
        else:
            chosen = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--layers {spec!r}: {fix}.") from None
    bad = [i for i in chosen if not -n_layers <= i < n_layers]
    if bad or not chosen:
        raise InputError(f"--layers {spec!r}: {bad or 'nothing'} outside the model's; {fix}.")
    return sorted({i % n_layers for i in chosen})


def subset_of_states(layers: str | Sequence[int] | None, n_layers: int) -> list[int] | None:
    """hidden_states, or None when that is every one of them."""
    kept = hidden_states(layers, n_layers)
    return None if kept == list(range(n_layers)) else kept


def _token_layers(settings: ExtractSettings, n_layers: int) -> list[int] | None:
    if not settings.tokens:
        return None
    layers = list(range(n_layers)) if settings.token_layers is None else list(settings.token_layers)
    bad = [layer for layer in layers if not -n_layers <= layer < n_layers]
    if bad:
        raise InputError(f"token layers {bad} do not exist: this model has hidden states 0..{n_layers - 1}.")
    return sorted({layer % n_layers for layer in layers})


def _effective_max_length(settings: ExtractSettings, info: ModelInfo) -> int:
    if settings.max_length is None:
        return info.position_limit
    if settings.max_length > info.position_limit:
        tqdm.write(f"finetext: --max-length {settings.max_length} exceeds the model's limit "
                   f"{info.position_limit}; using {info.position_limit}.")
        return info.position_limit
    return settings.max_length


def _blocks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while block := list(islice(records, size)):
        yield block


def _prefetched(blocks: Iterator[tuple[int, list[Record]]], tokenize_block,
                pool: ThreadPoolExecutor) -> Iterator[tuple]:
    """Tokenise block b+1 in a worker thread while block b runs through the model."""
    ahead = None
    for b, block in blocks:
        future = pool.submit(tokenize_block, block)
        if ahead is not None:
            yield ahead[0], ahead[1].result()
        ahead = (b, future)
    if ahead is not None:
        yield ahead[0], ahead[1].result()


class BlockEncoder:
    """Tokenises a block, runs length-sorted token-budget batches, pools on the device."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, settings: ExtractSettings,
                 max_length: int, token_layers: list[int] | None, hidden_states: list[int] | None = None) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.settings, self.max_length, self.token_layers = settings, max_length, token_layers
        self.hidden_states = hidden_states  # pooled: these hidden states, or all for None
        # measured (bench/extract_speed.py): CPUs run fastest on small batches that stay in cache
        self.batch_tokens = settings.batch_tokens or (4096 if device.type == "cpu" else 16384)
        self.storage = torch.float16 if settings.storage_dtype == "float16" else torch.float32

    def tokenize(self, block: Sequence[Record]) -> tuple[list[list[int]], list[list[int]] | None, np.ndarray]:
        """Token ids (and token type ids) per document, truncated to max_length, and a truncated flag (tokens.py)."""
        return tokenize(self.tokenizer, block, self.max_length)

    @torch.inference_mode()
    def encode(self, tokenized: tuple[list[list[int]], list[list[int]] | None, np.ndarray],
               on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Pooled features of one tokenised block, rows in the block's order. on_batch(documents, tokens) is called
        after each batch (a progress bar)."""
        ids, types, truncated = tokenized
        lengths = np.array([len(x) for x in ids])
        n = len(ids)
        pooled = {p: None for p in self.settings.ordered_poolings}
        token_rows: list[np.ndarray | None] = [None] * n
        pad_id = self.tokenizer.pad_token_id
        for batch in token_budget_batches(lengths, self.batch_tokens):
            inputs = {k: torch.from_numpy(v).to(self.device) for k, v in pad_right(ids, types, batch, pad_id).items()}
            out = self.model(**inputs, output_hidden_states=True)
            hidden = [h.float() for h in out.hidden_states]  # layers × (batch, seq, hidden)
            kept = [hidden[i] for i in self.hidden_states] if self.hidden_states is not None else hidden
            for name in pooled:
                rows = pool(kept, inputs["attention_mask"], name).to(self.storage).cpu().numpy()
                if pooled[name] is None:
                    pooled[name] = np.empty((n, *rows.shape[1:]), dtype=rows.dtype)  # (block, layers, hidden)
                pooled[name][batch] = rows
            if self.token_layers is not None:
                # (batch, kept, seq, hidden)
                kept = torch.stack([hidden[k] for k in self.token_layers], 1).to(self.storage)
                for row, i in enumerate(batch):
                    token_rows[i] = kept[row, :, :lengths[i]].transpose(0, 1).cpu().numpy()  # (tokens, kept, hidden)
            if on_batch is not None:
                on_batch(len(batch), int(lengths[batch].sum()))
        arrays = {f"pool_{name}": value for name, value in pooled.items()}
        arrays["n_tokens"] = lengths.astype(np.int32)
        arrays["truncated"] = truncated
        if self.token_layers is not None:
            arrays["token_states"] = np.concatenate(token_rows)
            arrays["token_lengths"] = lengths.astype(np.int64)
        return arrays


def extract_corpus(
    input: str,
    output: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str | None = "label",
    id_column: str | None = None,
    fallback_encoding: str | None = None,
    skip_bad_rows: bool = False,
    model: str | None = None,
    revision: str | None = None,
    poolings: Sequence[str] = ("mean",),
    max_length: int | None = None,
    device: str = "auto",
    compute_dtype: str = "fp32",
    storage_dtype: str = "float16",
    tokens: bool = False,
    token_layers: Sequence[int] | None = None,
    batch_tokens: int | None = None,
    block_docs: int | None = None,
    layers: str | Sequence[int] | None = None,
    force: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Encode a corpus once and cache every hidden state, pooled per document, in an HDF5 file.

    `input` is a .csv/.tsv/.jsonl file, a folder of per-label .txt subfolders, or "bbc". The same corpus
    with the same settings again returns at once; another corpus or other settings at an existing
    `output` raise CacheMismatchError unless `force`. An interrupted run resumes from its last block.
    """
    start = time.perf_counter()
    output = Path(output)
    spec = CorpusSpec(input, text_column, text_pair_column, label_column, id_column, fallback_encoding,
                      skip_bad_rows)
    settings = ExtractSettings(model, revision, tuple(poolings), max_length, device, compute_dtype, storage_dtype,
                               tokens, None if token_layers is None else tuple(token_layers), batch_tokens,
                               block_docs, layers if layers is None or isinstance(layers, str) else tuple(layers))
    check_output(output, folder=False)
    with exclusive(output):  # one writer per cache: a second run to it is refused at once
        remove_leftovers(output)  # temporary files of runs that died publishing
        return _extract(spec, settings, output, force, progress, start)


def _extract(spec: CorpusSpec, settings: ExtractSettings, output: Path, force: bool, progress: bool,
             start: float) -> ExtractResult:
    """extract_corpus, holding the output's lock."""
    model, revision = settings.model, settings.revision
    summary = scan(spec)  # validates every row before any model work
    info, tokenizer = describe_model(model, revision)
    length = _effective_max_length(settings, info)
    check_max_length(length, tokenizer, spec.text_pair_column is not None, info.model_id)
    layers_kept = _token_layers(settings, info.n_layers)
    subset = subset_of_states(settings.layers, info.n_layers)  # the hidden states kept, when not all of them
    states = subset or list(range(info.n_layers))
    identity = settings_identity(settings, info, length, info.n_layers, subset)
    fingerprints = {"corpus_fingerprint": summary.fingerprint, "settings_fingerprint": fingerprint(identity)}

    if _up_to_date(output, fingerprints, identity, force):
        ShardStore.discard(output)  # a run killed while cleaning up after publishing left it
        return ExtractResult(output, "up to date", summary.n_docs, time.perf_counter() - start)
    if output.parent and not output.parent.exists():
        output.parent.mkdir(parents=True)
    _check_room(output, settings, summary.n_docs, len(states), info.hidden_size, progress)

    block_size = settings.docs_per_block
    shards = ShardStore(output, fingerprints, block_size)
    n_blocks = -(-summary.n_docs // block_size)
    resumed = any(shards.done(b) for b in range(n_blocks))
    torch_device = resolve_device(settings.device)
    if not all(shards.done(b) for b in range(n_blocks)):
        encoder = BlockEncoder(load_model(resolve_model(model), revision, torch_device, settings.compute_dtype),
                               tokenizer, torch_device, settings, length, layers_kept,
                               subset)
        done_docs = sum(min(block_size, summary.n_docs - b * block_size) for b in range(n_blocks) if shards.done(b))
        todo = ((b, block) for b, block in enumerate(_blocks(iter_records(spec), block_size)) if not shards.done(b))
        with tqdm(total=summary.n_docs, initial=done_docs, unit="doc", disable=not progress,
                  desc=f"extract {Path(spec.source).name}", dynamic_ncols=True) as bar, \
                ThreadPoolExecutor(max_workers=1) as reader:
            rate = _TokenRate(bar)
            for b, tokenized in _prefetched(todo, encoder.tokenize, reader):
                shards.save(b, encoder.encode(tokenized, on_batch=rate))

    labels = summary.labels
    attrs = _cache_attrs(spec, settings, info, length, torch_device, summary, layers_kept, states, identity,
                         fingerprints)
    write_cache(output, shards, n_blocks, attrs, summary.ids, labels, summary.label_names)
    shards.remove()
    return ExtractResult(output, "resumed" if resumed else "created", summary.n_docs, time.perf_counter() - start)


def _check_room(output: Path, settings: ExtractSettings, n_docs: int, states: int, hidden: int,
                progress: bool) -> None:
    """Say how large the pooled cache will be, and refuse to start when the disk cannot hold it: its blocks and the
    published file both exist until the end (token-level states come on top, and are not counted)."""
    item = 2 if settings.storage_dtype == "float16" else 4
    size = n_docs * states * hidden * item * len(settings.poolings)
    if progress:
        tqdm.write(f"extract: {output} will hold about {size / 2**20:,.1f} MiB of features ({n_docs:,} documents × "
                   f"{states} hidden states × {hidden} × {item} bytes × {len(settings.poolings)} "
                   f"pooling{'s' if len(settings.poolings) > 1 else ''})", file=sys.stderr)
    written = sum(p.stat().st_size for p in partial_dir(output).glob("block-*.npz"))
    check_free_space(output, max(2 * size - written, 0) + SLACK_BYTES, "this cache (its blocks, then the file)")


class _TokenRate:
    """Moves an extract progress bar by each batch's documents and shows the tokens per second."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.tokens, self.start = bar, 0, time.perf_counter()

    def __call__(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):,.0f} tokens/s",
                                 refresh=False)
        self.bar.update(docs)


def _up_to_date(output: Path, fingerprints: dict[str, str], identity: dict[str, Any], force: bool) -> bool:
    """Whether `output` already holds this corpus with these settings. A cache of another corpus or other settings
    is refused (CacheMismatchError, both fingerprints and the settings that differ shown) unless `force`."""
    if force or not output.exists():
        return False
    try:
        existing = read_attrs(output)
    except CacheFormatError as exc:
        raise CacheMismatchError(f"{output} exists and is not a finetext cache ({str(exc).split(': ', 1)[-1]}) "
                                 "Pass --force to replace it, or choose another --output.") from None
    theirs = {k: existing.get(k) for k in fingerprints}
    if theirs == fingerprints:
        return True
    differ = [{"corpus": "another corpus", "settings": "other settings"}[k.split("_")[0]]
              for k in fingerprints if theirs[k] != fingerprints[k]]
    old_identity = existing.get("settings") or {}
    changed = [f"  {k}: cache {old_identity.get(k)!r}, asked {v!r}"
               for k, v in identity.items() if old_identity.get(k) != v]
    raise CacheMismatchError(
        f"{output} was built from {' and '.join(differ)}:\n"
        + "\n".join(f"  {k}: cache {theirs[k]}\n  {' ' * len(k)}  asked {fingerprints[k]}" for k in fingerprints)
        + ("\n" + "\n".join(changed) if "other settings" in differ else "")
        + "\nFix: pass --force to rebuild it (the old file stays until the new one is complete), "
          "or choose another --output."
    )


def _cache_attrs(spec: CorpusSpec, settings: ExtractSettings, info: ModelInfo, length: int, device: torch.device,
                 summary: CorpusSummary, layers_kept: list[int] | None, states: list[int], identity: dict[str, Any],
                 fingerprints: dict[str, str]) -> dict[str, Any]:
    """The cache's self-description (docs/cache-format.md): format, model, settings, versions, corpus, fingerprints."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in asdict(info).items() if k not in ("revision", "position_limit")},
        "model_revision": info.revision,
        "max_length": length,
        "n_layers": len(states),  # the hidden states cached
        "hidden_states": states,
        "poolings": settings.ordered_poolings,
        "compute_dtype": settings.compute_dtype,
        "storage_dtype": settings.storage_dtype,
        "device": str(device),
        "n_docs": summary.n_docs,
        "token_layers": layers_kept,
        "library_versions": library_versions(),
        "corpus": spec.describe(),
        "skipped": summary.skipped,
        "settings": identity,
        **fingerprints,
    }


__all__ = ["ExtractSettings", "ExtractResult", "extract_corpus", "partial_dir"]
