"""Single runs that compose extract/ and classify/: train, evaluate, predict, and the demo."""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from finetext.classify import PoolPrior, check_feature_source, load_head, save_head
from finetext.classify.pool_prior import prior_helps
from finetext.classify.persist import load_arrays
from finetext.extract import CorpusSpec, InputError, extract_corpus, iter_records, open_cache, scan
from finetext.extract.outputs import check_output, exclusive, remove_leftovers
from finetext.pipeline.publish import publish
from finetext.pipeline.sweep import (AUTO_PRIOR_HEADS, HEADS, SweepConfig, budget_rows, check_classes, check_device,
                                     check_pool_prior,
                            make_head, prior_power, run_sweep)


def feature_info(meta: dict[str, Any], pooling: str, layers: Sequence[int] | None) -> dict[str, Any]:
    """What a head needs to know to get the same features again: the encoder and how it was pooled."""
    keys = ("model_id", "model_revision", "weights_sha256", "tokenizer_sha256", "model_type", "n_layers",
            "hidden_states", "hidden_size", "max_length", "compute_dtype", "storage_dtype", "settings_fingerprint",
            "corpus_fingerprint")
    return {**{k: meta.get(k) for k in keys}, "pooling": pooling, "layers": list(layers) if layers else None}


def train_head(train: str, head: str, output: str, *, budget: int | None = None, seed: int = 0,
               pooling: str = "mean", layers: Sequence[int] | None = None,
               params: dict[str, Any] | None = None, device: str = "cpu", progress: bool = False,
               pool_prior: float | str | None = None) -> Path:
    """Fit one head on a cache (or a per-class budget of it) and save it to `output`; the vectorised heads
    train on `device`, with a progress bar over the epochs when `progress`. pool_prior: a PoolPrior of that power
    fitted on every row of the cache (labels unread), saved with the head and applied wherever it is used; "auto":
    power 1 for logistic regression if it cross-validates better on the training rows, as in a sweep (the saved
    config's feature_info says whether it did)."""
    if head not in HEADS:
        raise InputError(f"head: expected one of {', '.join(HEADS)}, got {head!r}.")
    check_device(device)
    check_pool_prior(pool_prior)
    check_output(Path(output), folder=True)
    with exclusive(output):  # one writer per head folder
        remove_leftovers(Path(output))
        return _train_head(train, head, output, budget, seed, pooling, layers, params, device, progress, pool_prior)


def _train_head(train: str, head: str, output: str, budget: int | None, seed: int, pooling: str,
                layers: Sequence[int] | None, params: dict[str, Any] | None, device: str, progress: bool,
                pool_prior: float | str | None) -> Path:
    """train_head, holding the output's lock."""
    with open_cache(train) as cache:
        X = cache.features(pooling, layers=layers)
        y = cache.label_strings()
        meta = cache.meta
    check_classes(y, train)
    rows = budget_rows(y, budget, seed, train)
    info = feature_info(meta, pooling, layers)
    info["train_rows"] = len(rows)
    model = make_head(head, {**(params or {}), "random_state": seed}, device, verbose=progress)
    extra = {}
    if pool_prior is not None:
        info["pool_prior"], info["pool_prior_asked"] = None, pool_prior
    if pool_prior is not None and (pool_prior != "auto" or isinstance(model, AUTO_PRIOR_HEADS)):
        prior = PoolPrior(power=prior_power(pool_prior)).fit(X)
        Z = prior.transform(X)
        if pool_prior != "auto" or prior_helps(X, Z, y, [rows], [seed], layer=model.layer)[0]:
            X, info["pool_prior"], extra["pool_prior"] = Z, prior.power, prior.arrays()
    model.fit(X[rows], y[rows])
    return save_head(model, output, info, extra)


def head_features(head_dir: str | os.PathLike, info: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """X (n, layers, hidden) as the head saw features in training: through its pool prior when it has one."""
    if info.get("pool_prior") is None:
        return X
    return PoolPrior.from_arrays(load_arrays(head_dir, "pool_prior"), info["pool_prior"]).transform(X)


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    labels: list[str]
    confusion: np.ndarray  # (true, predicted) in `labels` order
    n_docs: int


def evaluate_head(head_dir: str, cache_path: str | None = None, *, corpus: CorpusSpec | None = None,
                  label_map: dict[str, str] | None = None, output: str | None = None,
                  device: str = "auto", normalize: bool = False) -> Evaluation:
    """Score a saved head on a cache, or on a labelled corpus run through the head's own encoder.

    label_map renames the data's labels to the head's (out-of-domain evaluation); normalize: the confusion matrix
    plot shows each row as percentages of its true class.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    if (cache_path is None) == (corpus is None):
        raise InputError("evaluate: give exactly one of --cache CACHE.h5 or --input FILE.")
    head = load_head(head_dir)
    info = head.feature_info_
    if corpus is not None:
        if corpus.label_column is None:
            raise InputError(f"{corpus.source}: evaluation needs labels; give --label-column.")
        scan(corpus)
        records = list(iter_records(corpus))
        X = encode_like(info, records, device, head_dir)
        y = np.array([r.label for r in records])
        cache_path = corpus.source
    else:
        with open_cache(cache_path) as cache:
            try:
                check_feature_source(info, cache.meta, cache_name=str(cache_path))
            except ValueError as exc:
                raise InputError(str(exc)) from None
            X = cache.features(info.get("pooling") or "mean", layers=info.get("layers"))
            y = cache.label_strings()
    if label_map:
        y = np.array([label_map.get(v, v) for v in y])
    unseen = sorted(set(y.tolist()) - set(map(str, head.classes_)))
    if unseen:
        raise InputError(f"{cache_path}: labels {unseen} are not among the head's classes "
                         f"{list(map(str, head.classes_))}. Pass --label-map FILE.json mapping them.")
    pred = head.predict(head_features(head_dir, info, X))
    labels = [str(c) for c in head.classes_]
    result = Evaluation(float(accuracy_score(y, pred)), float(f1_score(y, pred, average="macro")), labels,
                        confusion_matrix(y, pred, labels=labels), len(y))
    if output:
        _plot_confusion(Path(output) / "confusion_matrix.png", result, normalize)
        Path(output, "metrics.json").write_text(json.dumps(
            {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "labels": labels,
             "confusion": result.confusion.tolist(), "n_docs": result.n_docs, "cache": str(cache_path)}, indent=1))
    return result


def _plot_confusion(path: Path, result: Evaluation, normalize: bool = False) -> None:
    """The confusion matrix as a PNG sized by the number of classes; `normalize`: each row as percentages of its
    true class (colour and text), else counts."""
    from finetext.pipeline.report import annotate_cells, plt

    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(result.labels)
    values = result.confusion.astype(float)
    if normalize:
        values = 100 * values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    side = min(max(4.5, 0.55 * n + 2.5), 40)  # inches: every label and number legible up to ~70 classes
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=100 if normalize else max(values.max(), 1))
    ax.set_xticks(range(n), result.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    annotate_cells(ax, values, (lambda v: f"{v:.0f}%") if normalize else (lambda v: f"{v:.0f}"),
                   dark_above=(100 if normalize else values.max()) / 2)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class" if normalize else "documents")
    ax.set_title(f"accuracy {100 * result.accuracy:.1f}%, macro-F1 {100 * result.macro_f1:.1f}% "
                 f"({result.n_docs} documents)")
    fig.tight_layout()
    publish(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def encode_like(info: dict[str, Any], records: list, device: str = "auto",
                head_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Pooled features of new texts with the encoder and settings a head was trained on. (n, layers, hidden)

    A fine-tuned head names its own encoder folder (`encoder_dir`, relative to the head's folder).
    """
    from finetext.extract.encoder import describe_model, load_model, resolve_device, resolve_model
    from finetext.extract.run import BlockEncoder, ExtractSettings, subset_of_states

    model_id = info.get("model_id")
    revision = info.get("model_revision") or None
    if info.get("encoder_dir"):
        model_id = str((Path(head_dir or ".") / info["encoder_dir"]).resolve())
    try:
        described, tokenizer = describe_model(model_id, revision)
    except InputError as exc:
        raise InputError(f"this head was trained on features of {model_id!r} (revision {revision or '-'}), "
                         f"which cannot be loaded here: {exc}") from None
    if info.get("weights_sha256") and described.weights_sha256 and described.weights_sha256 != info["weights_sha256"]:
        raise InputError(f"the model at {model_id!r} is not the one this head was trained on (weights sha256 "
                         f"{described.weights_sha256[:12]} vs {info['weights_sha256'][:12]}).")
    pooling = info.get("pooling") or "mean"
    states = tuple(info["hidden_states"]) if info.get("hidden_states") else None  # the cache's, when a subset
    settings = ExtractSettings(model_id, revision, (pooling,), info.get("max_length"), device,
                               info.get("compute_dtype") or "fp32", info.get("storage_dtype") or "float16",
                               layers=states)
    torch_device = resolve_device(device)
    encoder = BlockEncoder(load_model(resolve_model(model_id), revision, torch_device, settings.compute_dtype),
                           tokenizer, torch_device, settings, int(info.get("max_length") or described.position_limit),
                           None, subset_of_states(states, described.n_layers))
    X = np.concatenate([encoder.encode(encoder.tokenize(records[s:s + 2048]))[f"pool_{pooling}"]
                        for s in range(0, len(records), 2048)]).astype(np.float32)
    layers = info.get("layers")
    return X[:, layers] if layers else X


def predict_texts(head_dir: str, *, input: str | None = None, texts: Sequence[str] | None = None,
                  output: str | None = None, text_column: str = "text", id_column: str | None = None,
                  fallback_encoding: str | None = None, skip_bad_rows: bool = False,
                  device: str = "auto") -> list[dict[str, Any]]:
    """Run the head's encoder over new texts and apply the head; optionally write a CSV."""
    from finetext.extract.corpus import Record

    if (input is None) == (texts is None):
        raise InputError("predict: give exactly one of --input FILE or --text \"...\".")
    head = load_head(head_dir)
    if texts is not None:
        bad = [i + 1 for i, t in enumerate(texts) if not t or not t.strip()]
        if bad:
            raise InputError(f"--text number(s) {bad} are empty; give some text to classify.")
        records = [Record(i + 1, str(i + 1), t, None, None) for i, t in enumerate(texts)]
    else:
        spec = CorpusSpec(input, text_column=text_column, label_column=None, id_column=id_column,
                          fallback_encoding=fallback_encoding, skip_bad_rows=skip_bad_rows)
        scan(spec)  # the same bad-input rules as extract, before any model work
        records = list(iter_records(spec))
    X = encode_like(head.feature_info_, records, device, head_dir)
    proba = head.predict_proba(head_features(head_dir, head.feature_info_, X))
    classes = [str(c) for c in head.classes_]
    rows = [{"id": r.id, "text": r.text, "label": classes[int(p.argmax())],
             **{f"p_{c}": float(v) for c, v in zip(classes, p)}} for r, p in zip(records, proba)]
    if output:
        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

        publish(Path(output), write_csv)
    return rows


def run_demo(output: str = "runs/demo", *, seeds: int = 5, budgets: Sequence[str] = ("4", "16", "64"),
             max_length: int = 256, progress: bool = True) -> Path:
    """BBC News with the packaged MiniLM: extract once (cached), a small sweep, the report; says how long each
    stage took."""
    out = Path(output)
    cache = out / "bbc.h5"
    result = extract_corpus("bbc", cache, max_length=max_length, progress=progress)
    print(f"extract: {cache}: {result.status}, {result.n_docs} documents in {result.seconds:.1f} s")
    config = SweepConfig(train=str(cache), output=str(out / "sweep"), budgets=list(budgets), seeds=seeds)
    start = time.perf_counter()
    sweep = run_sweep(config, progress=progress, replace_other=True)  # the demo's own folder: redo if settings changed
    print(f"sweep: {len(config.heads)} heads × {len(budgets)} budgets × {seeds} seeds, tables and plots in "
          f"{time.perf_counter() - start:.1f} s")
    return sweep
