"""End-to-end fine-tuning, the paper's main method, and its multi-task variant.

The encoder runs with every hidden state, each is pooled per document exactly as `extract` pools it, and a
finetext head sits on top. Two objectives:

- classification: encoder and head (classify.stack's modules) train together on cross-entropy. Several tasks
  share the encoder and the layer selector, each with its own output layer, and batches are mixed across tasks.
- contrastive, for few labels (SetFit's idea, Tunstall et al. 2022): the encoder learns to put documents of a
  class close together, with SetFit's cosine-similarity loss taken over every pair of rows in a batch (a batch
  holds groups of rows of the same class), not over pairs drawn one by one; then the head (the same estimator
  `finetext train` fits on a cache) is fitted on the tuned encoder's pooled features of every layer.
  `objective="auto"` takes it when the training set has at most FEW_SHOT_PER_CLASS labels per class, and then,
  with more rows than a pair batch, tunes only where tuning on one half of the labelled rows predicts the other
  half better than the pretrained encoder (tuning_check); else the head is fitted on the pretrained features.

A result folder is an ordinary saved head (config.json + weights.safetensors) whose features come from its
own fine-tuned encoder in `encoder/` (save_pretrained: safetensors and the tokenizer), so `finetext predict`
and `finetext evaluate` take it like a head trained on a cache. A multi-task folder holds one such head per
task in `DIR/TASK/`, all pointing at the shared `DIR/encoder/`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from finetext.classify import LastLayerLogReg, LayerAttention, ScalarMix
from finetext.classify.budget import stratified_folds
from finetext.classify.persist import replace_dir, staging_dir, write_head_files
from finetext.classify.stack import LayerAttentionStack, ScalarMixStack
from finetext.extract.batching import pad_right, token_budget_batches
from finetext.extract.corpus import CorpusSpec, Record
from finetext.extract.encoder import describe_model, load_model, resolve_device, resolve_model, weights_hash
from finetext.extract.errors import InputError
from finetext.extract.outputs import check_output, exclusive, remove_leftovers
from finetext.extract.pooling import pool
from finetext.extract.tokens import check_max_length, tokenize
from finetext.pipeline.settings import CHECK_MIN_PER_CLASS, FEW_SHOT_PER_CLASS, PAIR_BATCH, FinetuneSettings
from finetext.pipeline.sweep import budget_rows

SELECTOR = ("w", "u", "gamma")  # the parameters a multi-task model shares across tasks (those a head has)

# The contrastive objective (docs/experiments.md has the measurements behind each; PAIR_BATCH is in settings).
PAIR_CHUNK = 16  # rows per forward pass within a batch, of similar length; at most this many full-length
                 # rows' activations are held at once (pair_backward)
PAIR_EPOCHS = 40  # steps: this many batches' worth of rows per labelled row (pair_steps)
PAIR_MIN_STEPS = 10
PAIR_LR = 1e-4  # AdamW, every encoder layer alike, rising over the first PAIR_WARMUP of the steps, then decaying
PAIR_WARMUP = 0.1


@dataclass
class Task:
    """One classification task: labelled training records, optional labelled test records."""

    name: str
    train: list[Record]
    test: list[Record] | None = None
    budget: int | None = None  # labels per class drawn from train (None: all)
    classes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if any(r.label is None for r in self.train):
            raise InputError(f"task {self.name}: the training corpus has no labels; give --label-column.")
        self.classes = np.unique([r.label for r in self.train])
        if len(self.classes) < 2:
            raise InputError(f"task {self.name}: only one class ({str(self.classes[0])!r}) in the training corpus.")
        if self.test is not None:
            unseen = sorted({r.label for r in self.test} - set(self.classes.tolist()), key=str)
            if None in unseen:
                raise InputError(f"task {self.name}: the test corpus has unlabelled rows; it needs labels.")
            if unseen:
                raise InputError(f"task {self.name}: test labels {unseen} never occur in the training corpus.")


class LastLayerLinear(torch.nn.Module):
    """A linear classifier on the last hidden state: plain fine-tuning. x (1, n, L, H) -> (1, 1, n, C)."""

    def __init__(self, L: int, H: int, C: int, generator: torch.Generator) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(H, C, generator=generator) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(C))

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        z = F.dropout(x[:, :, -1], dropout, self.training)  # (1, n, H)
        return (z @ self.W + self.b)[:, None]


def _head_module(kind: str, L: int, H: int, C: int, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    if kind == "last-layer":
        return LastLayerLinear(L, H, C, gen)
    return (LayerAttentionStack if kind == "layer-attention" else ScalarMixStack)(1, 1, L, H, C, gen)


class FinetuneModel(torch.nn.Module):
    """Encoder + one head per task (none for the contrastive objective, whose heads are fitted estimators); pooled
    hidden states (n, L, H) feed the task's head. Heads are held in a ModuleList by position, so any task name
    works (a ModuleDict refuses names like `train` or `to`)."""

    def __init__(self, encoder: torch.nn.Module, heads: dict[str, torch.nn.Module], pooling: str) -> None:
        super().__init__()
        self.encoder, self.heads, self.pooling = encoder, torch.nn.ModuleList(heads.values()), pooling
        self.tasks = {name: i for i, name in enumerate(heads)}
        first = next(iter(heads.values()), None)
        for head in list(heads.values())[1:]:  # the multi-task variant shares the layer selector
            for name in SELECTOR:
                if isinstance(getattr(first, name, None), torch.nn.Parameter):
                    setattr(head, name, getattr(first, name))

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, L, H) every hidden state pooled per document, in fp32."""
        out = self.encoder(**batch, output_hidden_states=True)  # hidden_states: L × (n, seq, H)
        return pool(out.hidden_states, batch["attention_mask"], self.pooling).float()

    def forward(self, batch: dict[str, torch.Tensor], task: str, dropout: float = 0.0) -> torch.Tensor:
        """logits (n, C) for `task`."""
        return self.head(task)(self.features(batch)[None], dropout if self.training else 0.0)[0, 0]

    def head(self, task: str) -> torch.nn.Module:
        return self.heads[self.tasks[task]]


def _layer_blocks(encoder: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList | None:
    """The transformer's list of layers (BERT's encoder.layer, GPT-2's h, ...): the first ModuleList of that length."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    return None


def parameter_groups(model: FinetuneModel, settings: FinetuneSettings) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay: the top layer at lr, each one below ×layer_decay, embeddings lowest."""
    n = model.encoder.config.num_hidden_layers if hasattr(model.encoder.config, "num_hidden_layers") \
        else model.encoder.config.n_layer
    blocks = _layer_blocks(model.encoder, n)
    in_block: dict[int, int] = {}
    if blocks is not None:
        for i, block in enumerate(blocks):
            in_block.update({id(p): i for p in block.parameters()})
    by_depth: dict[int, list[torch.nn.Parameter]] = {}
    for p in model.encoder.parameters():
        by_depth.setdefault(in_block.get(id(p), -1), []).append(p)  # -1: embeddings and the rest
    groups = [{"params": params, "lr": settings.lr * settings.layer_decay ** (n - 1 - depth),
               "weight_decay": settings.weight_decay} for depth, params in sorted(by_depth.items())]
    groups.append({"params": list(model.heads.parameters()), "lr": settings.head_lr, "weight_decay": settings.weight_decay})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


class Tokenized:
    """Token ids of some records, padded per batch on the right."""

    def __init__(self, tokenizer, records: Sequence[Record], max_length: int) -> None:
        self.ids, self.types, _ = tokenize(tokenizer, records, max_length, flags=False)
        self.max_length = max_length
        self.lengths = np.array([len(x) for x in self.ids])
        self.pad_id = tokenizer.pad_token_id

    def subset(self, rows: Sequence[int]) -> "Tokenized":
        """The tokens of some of these records, without tokenising them again."""
        part = copy.copy(self)
        part.ids = [self.ids[i] for i in rows]
        part.types = None if self.types is None else [self.types[i] for i in rows]
        part.lengths = self.lengths[np.asarray(rows, dtype=np.int64)]
        return part

    def batch(self, rows: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(device) for k, v in pad_right(self.ids, self.types, rows, self.pad_id).items()}


def _train_batches(lengths: np.ndarray, rows: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of similar length: shuffle, sort within windows of 50 batches, shuffle the batches."""
    rows = rows[rng.permutation(len(rows))]
    batches = []
    for start in range(0, len(rows), size * 50):
        window = rows[start:start + size * 50]
        window = window[np.argsort(lengths[window], kind="stable")]
        batches += [window[i:i + size] for i in range(0, len(window), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.inference_mode()
def predict_proba(model: FinetuneModel, task: str, tokens: Tokenized, device: torch.device,
                  autocast, batch_tokens: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) class probabilities and (n, L) weights over layers (uniform for a head without a selector)."""
    was = model.training
    model.eval()
    head = model.head(task)
    proba, weights = None, None
    for rows in token_budget_batches(tokens.lengths, batch_tokens):
        with autocast():
            x = model.features(tokens.batch(rows, device))[None]  # (1, n, L, H)
        p = head(x)[0, 0].softmax(-1).float().cpu().numpy()  # (n, C)
        w = head.layer_weights(x)[0, 0].float().cpu().numpy() if hasattr(head, "layer_weights") \
            else np.full((len(rows), x.shape[2]), 1.0 / x.shape[2], np.float32)  # (n, L)
        if proba is None:
            proba = np.empty((len(tokens.lengths), p.shape[1]), np.float32)
            weights = np.empty((len(tokens.lengths), w.shape[1]), np.float32)
        proba[rows], weights[rows] = p, w
    model.train(was)
    return proba, weights


@dataclass
class _Split:
    """A task's budget rows, tokenised once: local indices 0..n-1 split into training and validation."""

    tokens: Tokenized  # the budget rows' tokens
    codes: np.ndarray  # (n,) class index per budget row
    train_rows: np.ndarray  # local indices
    val_rows: np.ndarray
    val_tokens: Tokenized | None
    corpus_rows: np.ndarray  # (n,) which rows of the corpus the budget drew


def _split(task: Task, tokenizer, settings: FinetuneSettings, max_length: int, validate: bool) -> _Split:
    labels = np.array([r.label for r in task.train])
    rows = budget_rows(labels, task.budget, settings.seed, f"task {task.name}")
    codes = np.searchsorted(task.classes, labels[rows])
    local = np.arange(len(rows))
    val = np.array([], dtype=np.int64)
    if validate and settings.validation > 0 \
            and np.bincount(codes, minlength=len(task.classes)).min() >= settings.min_val_per_class:
        fold = stratified_folds(codes, round(1 / settings.validation), settings.seed)
        val, local = local[fold == 0], local[fold != 0]
    tokens = Tokenized(tokenizer, [task.train[i] for i in rows], max_length)
    return _Split(tokens, codes, local, val, tokens.subset(val) if len(val) else None, rows)


def _autocast_for(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext, precision
    if device.type != "cuda":
        raise InputError(f"precision {precision} is for GPUs; on {device.type} use --precision fp32.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), precision


@dataclass
class TaskResult:
    name: str
    n_train: int
    n_val: int
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    n_test: int = 0
    best_val_accuracy: float | None = None
    rows: list[int] = field(default_factory=list)


@dataclass
class Finetuned:
    """A trained model in memory: what `save_finetuned` writes."""

    net: FinetuneModel
    tokenizer: Any
    info: Any  # extract.encoder.ModelInfo of the starting model
    settings: FinetuneSettings
    max_length: int
    device: torch.device
    heads: dict[str, Any]  # task -> the head as a finetext estimator
    results: list[TaskResult]
    metrics: dict[str, Any]

    def predict_proba(self, task: str, records: Sequence[Record]) -> np.ndarray:
        """(n, C) class probabilities of new records for `task`, columns in the head's classes_ order: the saved
        head on the tuned encoder's features, as `finetext predict` computes them."""
        autocast, _ = _autocast_for(self.device, self.settings.precision)
        tokens = Tokenized(self.tokenizer, records, self.max_length)
        return self.heads[task].predict_proba(encode(self.net, tokens, self.device, autocast))


def finetune(tasks: Sequence[Task], output: str | os.PathLike, *, model: str | None = None,
             revision: str | None = None, settings: FinetuneSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune one encoder for `tasks` (one task: plain fine-tuning) and save the result folder.

    Returns the metrics written to `output/metrics.json`: per task the test accuracy (when a test corpus is
    given), and the training seconds, epochs and per-epoch history.
    """
    check_output(Path(output), folder=True)
    with exclusive(output):  # one writer per result folder, from the start: training is the long part
        remove_leftovers(Path(output))
        trained = train_finetune(tasks, model=model, revision=revision, settings=settings, progress=progress)
        save_finetuned(trained, tasks, output)
    return trained.metrics


def train_finetune(tasks: Sequence[Task], *, model: str | None = None, revision: str | None = None,
                   settings: FinetuneSettings | None = None, progress: bool = True) -> Finetuned:
    """Train the encoder and one head per task together; evaluate on the tasks' test corpora."""
    settings = settings or FinetuneSettings()
    if len({t.name for t in tasks}) != len(tasks) or not tasks:
        raise InputError(f"tasks need distinct names, got {[t.name for t in tasks]}.")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = resolve_device(settings.device)
    autocast, precision = _autocast_for(device, settings.precision)
    info, tokenizer = describe_model(model, revision)
    max_length = min(settings.max_length, info.position_limit)
    check_max_length(max_length, tokenizer, any(r.text_pair is not None for t in tasks for r in t.train[:1]),
                     info.model_id)
    encoder = load_model(resolve_model(model), revision, device, "fp32").train()
    L, H = info.n_layers, info.hidden_size
    objective = choose_objective(tasks, settings.objective)
    heads = {t.name: _head_module(settings.head, L, H, len(t.classes), settings.seed) for t in tasks} \
        if objective == "classification" else {}  # contrastive: the heads are estimators fitted afterwards
    net = FinetuneModel(encoder, heads, settings.pooling).to(device)
    splits = {t.name: _split(t, tokenizer, settings, max_length, objective == "classification") for t in tasks}
    if objective == "contrastive":
        return _train_contrastive(tasks, net, splits, tokenizer, info, settings, max_length, device, autocast,
                                  precision, rng, progress)

    start = time.perf_counter()
    n_batches = sum(math.ceil(len(s.train_rows) / settings.batch_size) for s in splits.values())
    epochs = max(settings.epochs, math.ceil(settings.min_steps * settings.grad_accum / n_batches))
    total_steps = max(1, epochs * n_batches // settings.grad_accum)
    warmup = int(settings.warmup * total_steps)
    opt = torch.optim.AdamW(parameter_groups(net, settings))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    validated = all(len(s.val_rows) for s in splits.values())
    best, best_state, since, history, step = -1.0, None, 0, [], 0
    bar = tqdm(total=total_steps, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(epochs):
        batches = [(name, b) for name, s in splits.items()
                   for b in _train_batches(s.tokens.lengths, s.train_rows, settings.batch_size, rng)]
        batches = [batches[i] for i in rng.permutation(len(batches))]  # tasks mixed
        losses = []
        for i, (name, rows) in enumerate(batches):
            s = splits[name]
            with autocast():
                logits = net(s.tokens.batch(rows, device), name, settings.dropout)
            loss = F.cross_entropy(logits.float(), torch.from_numpy(s.codes[rows]).to(device))
            scaler.scale(loss / settings.grad_accum).backward()
            losses.append(loss.item())
            if (i + 1) % settings.grad_accum and i + 1 < len(batches):
                continue
            _optimiser_step(opt, scaler, net.parameters(), _lr_factor(step, warmup, total_steps))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", epoch=epoch + 1)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}
        if validated:
            accs = _val_accuracies(net, splits, device, autocast)
            record["val_accuracy"] = accs
            mean_acc = float(np.mean(list(accs.values())))
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{mean_acc:.3f}", epoch=epoch + 1)
            if mean_acc > best:
                best, since = mean_acc, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
            else:
                since += 1
        history.append(record)
        if validated and since >= settings.patience:
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    train_seconds = time.perf_counter() - start

    results, exports = [], {}
    for t in tasks:
        s = splits[t.name]
        _, weights = predict_proba(net, t.name, s.tokens.subset(s.train_rows[:1024]), device, autocast)  # mean weights
        exports[t.name] = _export_head(net.head(t.name), settings, t.classes, L, H, weights.mean(0))
        r = TaskResult(t.name, len(s.train_rows), len(s.val_rows), rows=s.corpus_rows.tolist())
        if validated:
            r.best_val_accuracy = max(h["val_accuracy"][t.name] for h in history)
        if t.test:
            proba, _ = predict_proba(net, t.name, Tokenized(tokenizer, t.test, max_length), device, autocast)
            _score_test(r, t, proba)
        results.append(r)

    metrics = _metrics(info, "classification", results, train_seconds, history, step, device, precision, settings)
    return Finetuned(net, tokenizer, info, settings, max_length, device, exports, results, metrics)


def _metrics(info, objective: str, results: list[TaskResult], train_seconds: float, history: list[dict[str, Any]],
             steps: int, device: torch.device, precision: str, settings: FinetuneSettings) -> dict[str, Any]:
    metrics = {"model": info.model_id, "objective": objective, "tasks": [asdict(r) | {"rows": None} for r in results],
               "train_seconds": train_seconds, "epochs_run": len(history), "total_steps": steps,
               "device": str(device), "precision": precision, "settings": asdict(settings), "history": history}
    if len(results) == 1:  # the single-task metrics at the top level, as users read them
        metrics.update({k: v for k, v in asdict(results[0]).items() if k not in ("name", "rows")})
    return metrics


def choose_objective(tasks: Sequence[Task], objective: str) -> str:
    """The objective `auto` stands for: contrastive when every task has at most FEW_SHOT_PER_CLASS training rows
    per class, classification otherwise."""
    if objective != "auto":
        return objective
    per_class = [t.budget if t.budget is not None else len(t.train) / len(t.classes) for t in tasks]
    return "contrastive" if max(per_class) <= FEW_SHOT_PER_CLASS else "classification"


def pair_loss(embeddings: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of distinct rows of a batch: (1 - cos)² for two rows of one
    class, cos² for two of different classes, each kind weighing a half (SetFit draws as many pairs of each).

    embeddings: (n, H); codes: (n,) class indices."""
    z = F.normalize(embeddings, dim=-1)
    cos = z @ z.T
    same = codes[:, None] == codes[None]
    other = ~same
    same.fill_diagonal_(False)
    parts = [((1 - cos[same]) ** 2).mean()] if same.any() else []
    parts += [(cos[other] ** 2).mean()] if other.any() else []
    return torch.stack(parts).mean()


def pair_steps(n_rows: int) -> int:
    """Optimiser steps of the contrastive objective for n labelled rows: PAIR_EPOCHS passes of PAIR_BATCH rows'
    worth, at least PAIR_MIN_STEPS. While every row fits one batch a step sees all n(n-1)/2 pairs, so a few rows
    need few steps; beyond a batch the steps grow with the rows, not with the pairs as SetFit's do."""
    return max(PAIR_MIN_STEPS, math.ceil(PAIR_EPOCHS * n_rows / PAIR_BATCH))


def pair_batches(codes: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass over `rows` in batches of at most PAIR_BATCH rows: all of them when they fit, else shuffled groups
    of rows of one class (2-8 rows, fewer classes give bigger groups), so that every batch holds pairs of both
    kinds. codes: class index per row (indexed by the values of `rows`)."""
    if len(rows) <= PAIR_BATCH:
        return [rows]
    present = np.unique(codes[rows])
    size = int(np.clip(PAIR_BATCH // len(present), 2, 8))
    groups = []
    for c in present:
        mine = rows[codes[rows] == c]
        mine = mine[rng.permutation(len(mine))]
        groups += [mine[i:i + size] for i in range(0, len(mine), size)]
    batches, current, filled = [], [], 0
    for i in rng.permutation(len(groups)):
        if filled + len(groups[i]) > PAIR_BATCH:
            batches.append(np.concatenate(current))
            current, filled = [], 0
        current.append(groups[i])
        filled += len(groups[i])
    return batches + [np.concatenate(current)]


def pair_backward(net: FinetuneModel, tokens: Tokenized, rows: np.ndarray, codes: np.ndarray,
                  device: torch.device, autocast, scale) -> float:
    """The pair loss of one batch (the last layer's pooled vector of each row) and its gradients in net, from
    forward passes of PAIR_CHUNK rows of similar length, holding at most the activations of PAIR_CHUNK rows of
    max_length tokens. A batch within that keeps every chunk's activations for the backward; a larger one keeps
    only each chunk's vectors, and the backward encodes each chunk again with the same dropout draws
    (torch.utils.checkpoint: gradient caching, Gao et al. 2021). Both give the same gradients. scale: the loss's
    scaling before backward (the GradScaler's); codes: class index per row (indexed by the values of `rows`).
    Returns the loss."""
    rows = rows[np.argsort(tokens.lengths[rows], kind="stable")]
    chunks = [rows[i:i + PAIR_CHUNK] for i in range(0, len(rows), PAIR_CHUNK)]
    hold = sum(len(c) * tokens.lengths[c].max() for c in chunks) <= PAIR_CHUNK * tokens.max_length

    def vectors(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return net.features(batch)[:, -1]

    with autocast():
        parts = [vectors(b) if hold else checkpoint(vectors, b, use_reentrant=False)
                 for b in (tokens.batch(c, device) for c in chunks)]
    loss = pair_loss(torch.cat(parts).float(), torch.from_numpy(codes[rows]).to(device))
    scale(loss).backward()
    return loss.item()


def _train_contrastive(tasks: Sequence[Task], net: FinetuneModel, splits: dict[str, _Split], tokenizer, info,
                       settings: FinetuneSettings, max_length: int, device: torch.device, autocast, precision: str,
                       rng: np.random.Generator, progress: bool) -> Finetuned:
    """The contrastive objective: tune the encoder on pairs of labelled rows (the last layer's pooled vector),
    then fit each task's head on the pooled features of every layer. Under `objective="auto"` the labelled rows
    first decide whether tuning helps this task (tuning_check); where it does not, the heads are fitted on the
    pretrained encoder's features."""
    start = time.perf_counter()
    check = None
    if settings.objective == "auto":
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # tuning draws as without it
            check = tuning_check(tasks, net, splits, settings, device, autocast, precision, progress)
    history, steps = [], 0
    if check is None or check["tune"]:
        rows_of = {name: s.train_rows for name, s in splits.items()}
        history, steps = tune_on_pairs(net, splits, rows_of, rng, device, autocast, precision,
                                       "finetune (pairs)", progress)
    heads, results = {}, []
    for t in tasks:
        s = splits[t.name]
        X = encode(net, s.tokens.subset(s.train_rows), device, autocast)
        heads[t.name] = _cached_head(settings).fit(X, t.classes[s.codes[s.train_rows]])
    train_seconds = time.perf_counter() - start
    for t in tasks:
        s = splits[t.name]
        r = TaskResult(t.name, len(s.train_rows), 0, rows=s.corpus_rows.tolist())
        if t.test:
            X = encode(net, Tokenized(tokenizer, t.test, max_length), device, autocast)
            _score_test(r, t, heads[t.name].predict_proba(X))
        results.append(r)
    metrics = _metrics(info, "contrastive", results, train_seconds, history, steps, device, precision, settings)
    if check is not None:
        metrics["tuning_check"] = check
    return Finetuned(net, tokenizer, info, settings, max_length, device, heads, results, metrics)


def tune_on_pairs(net: FinetuneModel, splits: dict[str, _Split], rows_of: dict[str, np.ndarray],
                  rng: np.random.Generator, device: torch.device, autocast, precision: str, desc: str,
                  progress: bool) -> tuple[list[dict[str, Any]], int]:
    """Tune net's encoder on pairs of each task's rows `rows_of[task]` (indices into its split) for
    pair_steps(all those rows) steps; returns the per-epoch history and the number of steps."""
    start = time.perf_counter()
    steps = pair_steps(sum(len(r) for r in rows_of.values()))
    plan = []  # (epoch, task, rows) per optimiser step
    while len(plan) < steps:
        batches = [(name, b) for name, rows in rows_of.items() for b in pair_batches(splits[name].codes, rows, rng)]
        epoch = plan[-1][0] + 1 if plan else 0
        plan += [(epoch, *batches[i]) for i in rng.permutation(len(batches))]
    plan = plan[:steps]
    opt = torch.optim.AdamW(net.encoder.parameters(), lr=PAIR_LR, weight_decay=0.01)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    warmup = int(PAIR_WARMUP * len(plan))
    history, losses = [], []
    bar = tqdm(total=len(plan), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for step, (epoch, name, rows) in enumerate(plan):
        s = splits[name]
        losses.append(pair_backward(net, s.tokens, rows, s.codes, device, autocast, scaler.scale))
        _optimiser_step(opt, scaler, net.encoder.parameters(), _lr_factor(step, warmup, len(plan)))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", epoch=epoch + 1)
        if step + 1 == len(plan) or plan[step + 1][0] != epoch:
            history.append({"epoch": epoch + 1, "pair_loss": float(np.mean(losses)),
                            "seconds": time.perf_counter() - start})
            losses = []
    bar.close()
    return history, len(plan)


def tuning_check(tasks: Sequence[Task], net: FinetuneModel, splits: dict[str, _Split], settings: FinetuneSettings,
                 device: torch.device, autocast, precision: str, progress: bool) -> dict[str, Any]:
    """Whether tuning on pairs helps these tasks, decided from their labelled rows alone: the rows are cut in two
    stratified halves; the encoder is tuned on each half in turn and the head fitted on that half's tuned
    features predicts the other half, against the same head on the pretrained features. Tuning is kept unless
    it gets fewer rows right (a tie tunes). The encoder is restored after each half. Tuning is kept unchecked
    below CHECK_MIN_PER_CLASS rows in a class (the halves hold too few pairs of it to show what tuning does) and
    while all the rows fit one pair batch (the check would double a short tuning for a vote of too few rows to
    tell a few points apart)."""
    counts = [np.bincount(s.codes[s.train_rows], minlength=len(t.classes)) for t, s in zip(tasks, splits.values())]
    if min(c.min() for c in counts) < CHECK_MIN_PER_CLASS:
        return {"tune": True, "reason": f"a class has fewer than {CHECK_MIN_PER_CLASS} labelled rows"}
    n_rows = int(sum(c.sum() for c in counts))
    if n_rows <= PAIR_BATCH:
        return {"tune": True, "reason": f"at most {PAIR_BATCH} labelled rows"}
    pretrained = {k: v.detach().to("cpu", copy=True) for k, v in net.encoder.state_dict().items()}
    rng = np.random.default_rng([settings.seed, 1])
    before = {t.name: encode(net, splits[t.name].tokens.subset(splits[t.name].train_rows), device, autocast)
              for t in tasks}
    halves = {name: stratified_folds(s.codes[s.train_rows], 2, settings.seed) for name, s in splits.items()}
    right = {"tuned": 0, "pretrained": 0}
    for half in (0, 1):
        rows_of = {name: splits[name].train_rows[h != half] for name, h in halves.items()}
        tune_on_pairs(net, splits, rows_of, rng, device, autocast, precision, f"finetune (check {half + 1}/2)",
                      progress)
        for t in tasks:
            s, h = splits[t.name], halves[t.name]
            y = t.classes[s.codes[s.train_rows]]
            X = encode(net, s.tokens.subset(s.train_rows), device, autocast)
            for kind, features in (("tuned", X), ("pretrained", before[t.name])):
                head = _cached_head(settings).fit(features[h != half], y[h != half])
                right[kind] += int((head.predict(features[h == half]) == y[h == half]).sum())
        net.encoder.load_state_dict(pretrained)
    return {"tune": right["tuned"] >= right["pretrained"], "rows_right": right,
            "rows": n_rows}


def _cached_head(settings: FinetuneSettings):
    """The estimator the contrastive objective fits on the tuned features: `finetext train`'s head of that name."""
    if settings.head == "last-layer":
        return LastLayerLogReg(random_state=settings.seed)
    return (LayerAttention if settings.head == "layer-attention" else ScalarMix)(random_state=settings.seed)


def _optimiser_step(opt: torch.optim.Optimizer, scaler, params, factor: float) -> None:
    """One step at `factor` times each group's initial learning rate, gradients clipped to norm 1."""
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


@torch.inference_mode()
def encode(net: FinetuneModel, tokens: Tokenized, device: torch.device, autocast,
           batch_tokens: int = 4096) -> np.ndarray:
    """(n, L, H) every layer's pooled vector of each document, in fp32, as a cache holds them."""
    was = net.training
    net.eval()
    out = None
    for rows in token_budget_batches(tokens.lengths, batch_tokens):
        with autocast():
            x = net.features(tokens.batch(rows, device)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(tokens.lengths), *x.shape[1:]), np.float32)
        out[rows] = x
    net.train(was)
    return out


def _lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """The learning rate's multiplier at optimiser step `step`: linear warm-up over `warmup` steps, then linear
    decay to 0 at `total_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def _val_accuracies(net: FinetuneModel, splits: dict[str, Any], device: torch.device, autocast) -> dict[str, float]:
    """Each task's accuracy on its held-out validation rows."""
    accs = {}
    for name, s in splits.items():
        proba, _ = predict_proba(net, name, s.val_tokens, device, autocast)
        accs[name] = float((proba.argmax(1) == s.codes[s.val_rows]).mean())
    return accs


def _score_test(result: TaskResult, task: Task, proba: np.ndarray) -> None:
    """Fill a task's test accuracy and macro-F1 from the model's (n_test, C) probabilities."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true = [rec.label for rec in task.test]
    y_pred = task.classes[proba.argmax(1)]
    result.test_accuracy = float(accuracy_score(y_true, y_pred))
    result.test_macro_f1 = float(f1_score(y_true, y_pred, average="macro"))
    result.n_test = len(task.test)


def _export_head(module: torch.nn.Module, settings: FinetuneSettings, classes: np.ndarray, L: int, H: int,
                 layer_weights: np.ndarray):
    """The trained head as the scikit-learn estimator finetext saves and loads."""
    state = {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}
    if settings.head == "last-layer":
        head = LastLayerLogReg(layer=-1, random_state=settings.seed)
        W, b = state["W"].T, state["b"]  # (C, H), (C,)
        if len(classes) == 2:  # scikit-learn's binary form: sigmoid(z1 - z0) equals the two-class softmax
            W, b = W[1:] - W[:1], b[1:] - b[:1]
        head.import_state(classes, L, H, {"coef": W, "intercept": b}, {})
        return head
    cls = LayerAttention if settings.head == "layer-attention" else ScalarMix
    head = cls(n_members=1, random_state=settings.seed)
    state |= {"mean": np.zeros((L, H), np.float32), "std": np.ones((L, H), np.float32),
              "best_epoch": np.zeros((1, 1), np.int64)}  # the encoder's features go in as they are
    head.import_state(classes, L, H, state, {"layer_weights": layer_weights.tolist(), "normalization": "none"})
    return head


def save_finetuned(trained: Finetuned, tasks: Sequence[Task], output: str | os.PathLike) -> Path:
    """encoder/ (safetensors + tokenizer), the head(s), metrics.json and cells.jsonl; published atomically."""
    net, tokenizer, info, settings = trained.net, trained.tokenizer, trained.info, trained.settings
    exports, results, metrics = trained.heads, trained.results, trained.metrics
    staged = staging_dir(output)
    try:
        net.encoder.save_pretrained(staged / "encoder", safe_serialization=True)
        tokenizer.save_pretrained(staged / "encoder")
        feature_info = {
            "encoder_dir": "encoder", "model_id": f"{info.model_id} (fine-tuned)", "model_revision": None,
            "weights_sha256": weights_hash(str(staged / "encoder")), "tokenizer_sha256": info.tokenizer_sha256,
            "model_type": info.model_type, "n_layers": info.n_layers, "hidden_size": info.hidden_size,
            "max_length": trained.max_length, "compute_dtype": "fp32", "storage_dtype": "float32",
            "pooling": settings.pooling, "layers": None,
            "finetuned_from": {"model_id": info.model_id, "revision": info.revision,
                               "weights_sha256": info.weights_sha256},
        }
        single = len(tasks) == 1
        for t, r in zip(tasks, results):
            folder = staged if single else staged / t.name
            folder.mkdir(exist_ok=True)
            write_head_files(exports[t.name], folder, {**feature_info, "encoder_dir": "encoder" if single else "../encoder",
                                                       "task": t.name, "train_rows": len(r.rows)})
        (staged / "metrics.json").write_text(json.dumps(metrics, indent=1))
        kind = f"finetune-{settings.head}" if single else "multitask-finetune"
        with open(staged / "cells.jsonl", "w") as f:
            for t, r in zip(tasks, results):
                if r.test_accuracy is None:
                    continue
                f.write(json.dumps({"head": kind, "task": t.name, "budget": "all" if t.budget is None else str(t.budget),
                                    "seed": settings.seed, "objective": metrics["objective"], "n_train": len(r.rows),
                                    "n_classes": len(t.classes),
                                    "accuracy": r.test_accuracy,
                                    "macro_f1": r.test_macro_f1, "fit_seconds": metrics["train_seconds"],
                                    "rows": r.rows}) + "\n")
        return replace_dir(staged, output)
    finally:
        if staged.exists():
            shutil.rmtree(staged)


def read_corpus(spec: CorpusSpec) -> list[Record]:
    """Every record of a labelled corpus, validated first with extract's rules (file, row and field of any fault)."""
    from finetext.extract import iter_records, scan

    if spec.label_column is None:
        raise InputError(f"{spec.source}: fine-tuning needs labels; give --label-column.")
    scan(spec)
    return list(iter_records(spec))
