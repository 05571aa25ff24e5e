"""`extract_corpus`: text in, HDF5 cache of every layer's pooled hidden states out (resumable, atomic)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
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
from finetext.extract.errors import CacheFormatError, CacheMismatchError, InputError, OutputBusyError
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

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A batch's inputs on the device: to a GPU from pinned memory, without waiting for the copy."""
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

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
        parts: dict[str, list[torch.Tensor]] = {p: [] for p in self.settings.ordered_poolings}
        order = []
        token_rows: list[np.ndarray | None] = [None] * n
        pad_id = self.tokenizer.pad_token_id
        for batch in token_budget_batches(lengths, self.batch_tokens):
            inputs = {k: self._to_device(v) for k, v in pad_right(ids, types, batch, pad_id).items()}
            out = self.model(**inputs, output_hidden_states=True)
            hidden = [h.float() for h in out.hidden_states]  # layers × (batch, seq, hidden)
            kept = [hidden[i] for i in self.hidden_states] if self.hidden_states is not None else hidden
            for name in parts:  # pooled rows stay on the device until the block ends: a GPU never waits for a copy
                parts[name].append(pool(kept, inputs["attention_mask"], name).to(self.storage))
            order.append(batch)
            if self.token_layers is not None:
                # (batch, kept, seq, hidden)
                kept = torch.stack([hidden[k] for k in self.token_layers], 1).to(self.storage)
                for row, i in enumerate(batch):
                    token_rows[i] = kept[row, :, :lengths[i]].transpose(0, 1).cpu().numpy()  # (tokens, kept, hidden)
            if on_batch is not None:
                on_batch(len(batch), int(lengths[batch].sum()))
        rows = np.concatenate(order)
        arrays = {}
        for name, values in parts.items():  # (block, layers, hidden), in the block's order
            batched = torch.cat(values).cpu().numpy()
            arrays[f"pool_{name}"] = np.empty_like(batched)
            arrays[f"pool_{name}"][rows] = batched
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
    shard: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Encode a corpus once and cache every hidden state, pooled per document, in an HDF5 file.

    `input` is a .csv/.tsv/.jsonl/.parquet file, a saved `datasets` folder, a folder of per-label .txt subfolders,
    or "bbc". The same corpus with the same settings again returns at once; another corpus or other settings at an
    existing `output` raise CacheMismatchError unless `force`. An interrupted run resumes from its last block.

    Many processes: started by torchrun (WORLD_SIZE > 1), each rank encodes its share of the blocks (balanced by
    estimated tokens) on its own device, and rank 0 publishes the cache once every rank is done. `shard="I/N"`
    (I from 0) encodes shard I of N without torchrun (job arrays); the last shard to finish publishes, or
    `merge_shards`. Either way the cache is the one a single process writes.
    """
    start = time.perf_counter()
    output = Path(output)
    spec = CorpusSpec(input, text_column, text_pair_column, label_column, id_column, fallback_encoding,
                      skip_bad_rows)
    settings = ExtractSettings(model, revision, tuple(poolings), max_length, device, compute_dtype, storage_dtype,
                               tokens, None if token_layers is None else tuple(token_layers), batch_tokens,
                               block_docs, layers if layers is None or isinstance(layers, str) else tuple(layers))
    part = torchrun_shard()
    if shard is not None:
        if part is not None:
            raise InputError(f"--shard {shard} under torchrun ({part} already): torchrun gives each rank its shard; "
                             "drop --shard, or run without torchrun.")
        part = parse_shard(shard)
    check_output(output, folder=False)
    if part is not None:
        return _extract_shard(spec, settings, output, part, force, progress, start)
    with exclusive(output):  # one writer per cache: a second run to it is refused at once
        remove_leftovers(output)  # temporary files of runs that died publishing
        plan = _plan(spec, settings, output, force, progress)
        if plan.shards is None:
            ShardStore.discard(output)  # a run killed while cleaning up after publishing left it
            return ExtractResult(output, "up to date", plan.summary.n_docs, time.perf_counter() - start)
        resumed = any(plan.shards.done(b) for b in range(plan.n_blocks))
        torch_device = resolve_device(settings.device)
        _encode(plan, plan.parts[0], torch_device, progress, f"extract {Path(spec.source).name}")
        _publish(plan, torch_device)
    status = "resumed" if resumed else "created"
    return ExtractResult(output, status, plan.summary.n_docs, time.perf_counter() - start)


@dataclass(frozen=True)
class Shard:
    """One process's part of a sharded extraction: shard `index` (from 0) of `count`, whose blocks are balanced by
    estimated tokens (shard_blocks). torchrun's ranks wait for each other, then rank 0 publishes; shards started
    by --shard I/N are independent and the last one to finish publishes."""

    index: int
    count: int
    torchrun: bool = False
    local_rank: int = 0

    def __str__(self) -> str:
        return f"{'rank' if self.torchrun else 'shard'} {self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index = count = -1
    if not (count >= 1 and 0 <= index < count):
        raise InputError(f"--shard {text!r}: expected I/N, shard I of N counted from 0 (0 <= I < N), e.g. 0/8; "
                         "in a Slurm array of N tasks (--array=0-N-1): --shard $SLURM_ARRAY_TASK_ID/N.")
    return Shard(index, count)


def torchrun_shard() -> Shard | None:
    """This process's rank, when torchrun (or another launcher setting WORLD_SIZE > 1 and RANK) started it."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    return Shard(int(os.environ["RANK"]), world, torchrun=True, local_rank=int(os.environ.get("LOCAL_RANK") or 0))


def block_costs(chars: np.ndarray, block_size: int, max_length: int) -> np.ndarray:
    """Estimated tokens per block: a row's characters / 4 (about one word piece each in English text) plus its two
    special tokens, at most max_length."""
    estimate = np.minimum(chars.astype(np.int64) // 4 + 2, max_length)
    return np.add.reduceat(estimate, np.arange(0, len(estimate), block_size)) if len(estimate) else estimate


def shard_blocks(costs: np.ndarray, count: int) -> list[list[int]]:
    """The blocks of each of `count` shards, balanced by cost: the costliest block first, each to the shard with
    the least so far (ties to the lowest shard); each shard's blocks in corpus order."""
    load, parts = np.zeros(count), [[] for _ in range(count)]
    for b in np.argsort(-costs, kind="stable"):
        s = int(np.argmin(load))
        parts[s].append(int(b))
        load[s] += costs[b]
    return [sorted(p) for p in parts]


SHARD_BLOCKS = 8  # blocks per shard (about), for a corpus small enough to need smaller blocks for that
MIN_BLOCK_DOCS = 64


def shard_block_size(settings: ExtractSettings, n_docs: int, count: int) -> int:
    """Documents per block: the settings' for one process; for `count` shards small enough that each gets about
    SHARD_BLOCKS blocks to balance (a large corpus keeps the usual size, so it resumes under any shard count)."""
    if count == 1 or settings.block_docs:
        return settings.docs_per_block
    return min(settings.docs_per_block, max(MIN_BLOCK_DOCS, -(-n_docs // (SHARD_BLOCKS * count))))


def _extract_shard(spec: CorpusSpec, settings: ExtractSettings, output: Path, part: Shard, force: bool,
                   progress: bool, start: float) -> ExtractResult:
    """extract_corpus for one shard: encode its blocks (one writer per shard), then publish when all are there."""
    show = progress and (part.index == 0 or not part.torchrun)  # one bar per torchrun job: rank 0's
    if part.torchrun:
        _join_ranks(part)
    with exclusive(output.with_name(f"{output.name}.shard-{part.index}-of-{part.count}")):
        plan = _plan(spec, settings, output, force, show, part.count, request={
            "spec": {**asdict(spec), "source": _absolute(spec.source)}, "settings": asdict(settings),
            "shards": part.count})
        mine = plan.parts[part.index]
        if plan.shards is not None:
            _encode(plan, mine, _rank_device(settings.device, part), show, f"extract {Path(spec.source).name} [{part}]")
    n_mine = sum(plan.docs(b) for b in mine)
    if part.torchrun:
        _wait_for_ranks()
        if part.index != 0:
            return ExtractResult(output, f"{part} written", n_mine, time.perf_counter() - start)
    try:
        with exclusive(output):
            remove_leftovers(output)
            status = _publish_if_complete(plan, output, part, force)
    except OutputBusyError:
        if part.torchrun:
            raise
        status = f"{part} written; another shard is publishing the cache"
    whole = status in ("created", "up to date")
    return ExtractResult(output, status, plan.summary.n_docs if whole else n_mine, time.perf_counter() - start)


def _publish_if_complete(plan: "_Plan", output: Path, part: Shard, force: bool = False) -> str:
    """Publish the cache when every shard's blocks are there (holding the output's lock); the status to report.
    force: replace a cache of another corpus or other settings at `output` (as --force does)."""
    if plan.shards is None or _up_to_date(output, plan.fingerprints, plan.identity, force, redo_same=False):
        ShardStore.discard(output)
        return "up to date"
    missing = _missing_shards(plan)
    if missing:
        return f"{part} written; still to come: shard {','.join(map(str, missing))} of {part.count}"
    _publish(plan, resolve_device(plan.settings.device))
    return "created"


def _missing_shards(plan: "_Plan") -> list[int]:
    return [i for i, blocks in enumerate(plan.parts) if not all(plan.shards.done(b) for b in blocks)]


def merge_shards(output: str | Path, progress: bool = True) -> ExtractResult:
    """Publish the cache that `--shard I/N` runs wrote to `output`'s blocks, once all N are complete (the last
    shard to finish does this itself). Raises InputError naming the shards still missing."""
    start = time.perf_counter()
    output = Path(output)
    request = ShardStore.request(output)
    if request is None and output.exists():  # the last shard published it
        return ExtractResult(output, "up to date", int(read_attrs(output)["n_docs"]), time.perf_counter() - start)
    if request is None:
        raise InputError(f"{output}: no shards to merge ({partial_dir(output)} holds no request.json); run "
                         "`finetext extract INPUT -o OUTPUT --shard I/N` for every I first.")
    settings = request["settings"]
    settings = ExtractSettings(**{**settings, "poolings": tuple(settings["poolings"]),
                                  "token_layers": _tuple(settings["token_layers"]), "layers": _tuple(settings["layers"])})
    count = request["shards"]
    with exclusive(output):
        remove_leftovers(output)
        plan = _plan(CorpusSpec(**request["spec"]), settings, output, False, progress, count)
        missing = [] if plan.shards is None else _missing_shards(plan)
        if missing:
            raise InputError(f"{output}: shard {','.join(map(str, missing))} of {count} not complete; run "
                             f"`finetext extract ... -o {output} --shard I/{count}` for each of them, then merge.")
        status = _publish_if_complete(plan, output, Shard(0, count))
    return ExtractResult(output, status, plan.summary.n_docs, time.perf_counter() - start)


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _absolute(source: str) -> str:
    """A corpus path as an absolute one (`merge` may run elsewhere); a built-in corpus's name as it is."""
    return str(Path(source).resolve()) if Path(source).exists() else source


def _join_ranks(part: Shard) -> None:
    """Join torchrun's process group (gloo: the ranks only wait for each other, so it serves CPUs and GPUs alike)."""
    import datetime
    import torch.distributed as dist

    if not dist.is_initialized():  # a rank that finished waits for the slowest one, however long its share takes
        dist.init_process_group("gloo", rank=part.index, world_size=part.count, timeout=datetime.timedelta(days=7))


def _wait_for_ranks() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _rank_device(name: str, part: Shard) -> torch.device:
    """The device of a shard: a torchrun rank on a machine with GPUs takes the one of its local rank."""
    device = resolve_device(name)
    if device.type == "cuda" and part.torchrun and device.index is None:
        device = torch.device("cuda", part.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


@dataclass
class _Plan:
    """What a run has established before encoding: the corpus scanned, the model described, the fingerprints; and
    its blocks' store (None when the output already holds this cache)."""

    spec: CorpusSpec
    settings: ExtractSettings
    output: Path
    summary: CorpusSummary
    info: ModelInfo
    tokenizer: Any
    length: int
    layers_kept: list[int] | None
    subset: list[int] | None
    states: list[int]
    identity: dict[str, Any]
    fingerprints: dict[str, str]
    block_size: int
    n_blocks: int
    parts: list[list[int]]  # the blocks of each shard (one shard: all of them)
    shards: ShardStore | None

    def docs(self, block: int) -> int:
        """Documents in a block (the last may be short)."""
        return min(self.block_size, self.summary.n_docs - block * self.block_size)


def _plan(spec: CorpusSpec, settings: ExtractSettings, output: Path, force: bool, progress: bool, count: int = 1,
          request: dict[str, Any] | None = None) -> _Plan:
    """Validate the corpus and settings (every row, before any model work) and open the blocks' store."""
    summary = scan(spec)
    info, tokenizer = describe_model(settings.model, settings.revision)
    length = _effective_max_length(settings, info)
    check_max_length(length, tokenizer, spec.text_pair_column is not None, info.model_id)
    layers_kept = _token_layers(settings, info.n_layers)
    subset = subset_of_states(settings.layers, info.n_layers)  # the hidden states kept, when not all of them
    states = subset or list(range(info.n_layers))
    identity = settings_identity(settings, info, length, info.n_layers, subset)
    fingerprints = {"corpus_fingerprint": summary.fingerprint, "settings_fingerprint": fingerprint(identity)}
    block_size = shard_block_size(settings, summary.n_docs, count)
    parts = shard_blocks(block_costs(summary.chars, block_size, length), count)
    plan = _Plan(spec, settings, output, summary, info, tokenizer, length, layers_kept, subset, states, identity,
                 fingerprints, block_size, -(-summary.n_docs // block_size), parts, None)
    if _up_to_date(output, fingerprints, identity, force, redo_same=count == 1):
        return plan
    if output.parent and not output.parent.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
    _check_room(output, settings, summary.n_docs, len(states), info.hidden_size, progress)
    plan.shards = ShardStore(output, fingerprints, block_size, request)
    return plan


def _encode(plan: _Plan, mine: Sequence[int], device: torch.device, progress: bool, desc: str) -> None:
    """Encode the blocks `mine` not stored yet and store each (tokenising the next block while one runs)."""
    todo = [b for b in mine if not plan.shards.done(b)]
    if not todo:
        return
    settings, wanted = plan.settings, set(todo)
    encoder = BlockEncoder(load_model(resolve_model(settings.model), settings.revision, device, settings.compute_dtype),
                           plan.tokenizer, device, settings, plan.length, plan.layers_kept, plan.subset)
    docs = {b: plan.docs(b) for b in mine}
    blocks = islice(_blocks(iter_records(plan.spec), plan.block_size), max(todo) + 1)
    with tqdm(total=sum(docs.values()), initial=sum(docs.values()) - sum(docs[b] for b in todo), unit="doc",
              disable=not progress, desc=desc, dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        rate, written = _TokenRate(bar), None
        for b, tokenized in _prefetched(((b, block) for b, block in enumerate(blocks) if b in wanted),
                                        encoder.tokenize, reader):
            arrays = encoder.encode(tokenized, on_batch=rate)
            if written is not None:
                written.result()  # the block before is stored (or its error, a full disk, raised here)
            written = writer.submit(plan.shards.save, b, arrays)  # stored while the next block runs
        written.result()


def _publish(plan: _Plan, device: torch.device) -> None:
    """Write the cache from every block and remove the blocks (holding the output's lock)."""
    attrs = _cache_attrs(plan.spec, plan.settings, plan.info, plan.length, device, plan.summary, plan.layers_kept,
                         plan.states, plan.identity, plan.fingerprints)
    write_cache(plan.output, plan.shards, plan.n_blocks, attrs, plan.summary.ids, plan.summary.labels,
                plan.summary.label_names)
    plan.shards.remove()


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


def _up_to_date(output: Path, fingerprints: dict[str, str], identity: dict[str, Any], force: bool,
                redo_same: bool = True) -> bool:
    """Whether `output` already holds this corpus with these settings. A cache of another corpus or other settings
    is refused (CacheMismatchError, both fingerprints and the settings that differ shown) unless `force`, which
    also rebuilds the same cache unless not `redo_same` (shards: one of them may have just published it)."""
    if not output.exists() or (force and redo_same):
        return False
    try:
        existing = read_attrs(output)
    except CacheFormatError as exc:
        if force:
            return False
        raise CacheMismatchError(f"{output} exists and is not a finetext cache ({str(exc).split(': ', 1)[-1]}) "
                                 "Pass --force to replace it, or choose another --output.") from None
    theirs = {k: existing.get(k) for k in fingerprints}
    if theirs == fingerprints:
        return True
    if force:
        return False
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


__all__ = ["ExtractSettings", "ExtractResult", "extract_corpus", "merge_shards", "partial_dir"]
