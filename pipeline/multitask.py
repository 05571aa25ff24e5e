"""`finetext multitask`: one model for several tasks against one model per task, accuracy and training time.

Cached (--cached): one shared layer selector over every task's cache (classify.multitask) against one
LayerAttention per task. End to end: one shared encoder and selector with per-task output layers
(pipeline.finetune with several tasks) against one fine-tuning run per task.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from finetext.extract import CorpusSpec, InputError, extract_corpus, open_cache
from finetext.pipeline.finetune import Task, finetune, read_corpus
from finetext.pipeline.settings import FinetuneSettings
from finetext.extract.outputs import check_output, exclusive
from finetext.pipeline.publish import publish_text
from finetext.pipeline.sweep import budget_rows


@dataclass(frozen=True)
class TaskSource:
    """Where one task's train and test data are: two caches, or two labelled corpora and how to read them."""

    name: str
    train: str
    test: str
    train_columns: tuple[str, str] = ("text", "label")  # (text column, label column) of each file
    test_columns: tuple[str, str] = ("text", "label")

    def spec(self, split: str) -> CorpusSpec:
        text, label = self.train_columns if split == "train" else self.test_columns
        return CorpusSpec(self.train if split == "train" else self.test, text_column=text, label_column=label)


def parse_task(text: str) -> TaskSource:
    """'trec' (a registered dataset: its train and test splits) or 'NAME=TRAIN,TEST'."""
    from finetext.pipeline.registry import registry, resolve

    if "=" in text:
        name, _, files = text.partition("=")
        train, _, test = files.partition(",")
        if not name or not train or not test:
            raise InputError(f"task {text!r}: expected NAME=TRAIN,TEST (two caches or two labelled files).")
        return TaskSource(name, train, test)
    if text not in registry():
        raise InputError(f"task {text!r}: not a registered dataset ({', '.join(registry())}); write "
                         "NAME=TRAIN,TEST for your own files.")
    if "test" not in registry()[text].get("splits", {}):
        raise InputError(f"task {text!r} has no test split in the registry; write {text}=TRAIN,TEST with your "
                         "own split files (or caches).")
    (train, a), (test, b) = resolve(text, "train"), resolve(text, "test")
    return TaskSource(text, train, test, (a["text_column"], a["label_column"]), (b["text_column"], b["label_column"]))


def _cache(task: TaskSource, split: str, output: Path, model: str | None, max_length: int,
           progress: bool) -> str:
    spec = task.spec(split)
    if spec.source.endswith(".h5"):
        return spec.source
    path = output / "caches" / f"{task.name}-{split}.h5"
    extract_corpus(spec.source, path, text_column=spec.text_column, label_column=spec.label_column, model=model,
                   max_length=max_length, progress=progress)
    return str(path)


def _write(output: Path, metrics: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    publish_text(output / "metrics.json", json.dumps(metrics, indent=1))
    publish_text(output / "cells.jsonl", "".join(json.dumps(c) + "\n" for c in cells))


def run_multitask(tasks: Sequence[TaskSource], output: str | os.PathLike, *, cached: bool = False,
                  compare: bool = True, budget: int | None = None, model: str | None = None,
                  settings: FinetuneSettings | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the multi-task model (and, with compare, one model per task); write metrics.json and cells.jsonl."""
    settings = settings or FinetuneSettings()
    if len({t.name for t in tasks}) != len(tasks) or len(tasks) < 2:
        raise InputError(f"multitask: give at least two tasks with distinct names, got {[t.name for t in tasks]}.")
    out = Path(output)
    check_output(out, folder=True)
    with exclusive(out):  # one writer per result folder
        if cached:
            rows, cells = _cached(tasks, out, budget, model, settings, compare, progress)
        else:
            rows, cells = _end_to_end(tasks, out, budget, model, settings, compare, progress)
        metrics = {"mode": "cached" if cached else "end-to-end", "budget": budget, "seed": settings.seed,
                   "comparison": rows, "total_train_seconds": _totals(rows)}
        _write(out, metrics, cells)
    return metrics


def _totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Training seconds per method for all tasks: a shared model's time once, single-task times summed."""
    totals: dict[str, float] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        totals[method] = mine[0]["train_seconds"] if mine[0]["shared_time"] else sum(r["train_seconds"] for r in mine)
    return totals


def _row(task: str, method: str, accuracy: float, macro_f1: float, seconds: float, n_train: int,
         shared: bool) -> dict[str, Any]:
    return {"task": task, "method": method, "accuracy": accuracy, "macro_f1": macro_f1, "train_seconds": seconds,
            "n_train": n_train, "shared_time": shared}


def _cached(tasks, out: Path, budget, model, settings: FinetuneSettings, compare: bool, progress: bool):
    from sklearn.metrics import accuracy_score, f1_score

    from finetext.classify import LayerAttention
    from finetext.classify.multitask import fit_shared_selector
    from finetext.pipeline.workflows import feature_info

    data, tests, metas = {}, {}, {}
    for t in tasks:
        with open_cache(_cache(t, "train", out, model, settings.max_length, progress)) as c:
            X, y, metas[t.name] = c.features(settings.pooling), c.label_strings(), c.meta
        rows = budget_rows(y, budget, settings.seed, f"task {t.name}")
        data[t.name] = (X[rows], y[rows])
        with open_cache(_cache(t, "test", out, model, settings.max_length, progress)) as c:
            tests[t.name] = (c.features(settings.pooling), c.label_strings())
            test_settings = c.meta["settings_fingerprint"]
        first = metas[tasks[0].name]["settings_fingerprint"]
        for split, fingerprint in (("train", metas[t.name]["settings_fingerprint"]), ("test", test_settings)):
            if fingerprint != first:
                raise InputError(f"task {t.name}: its {split} cache was extracted with other settings than task "
                                 f"{tasks[0].name}'s train cache (settings fingerprint {fingerprint[:12]} vs "
                                 f"{first[:12]}); extract every cache with the same model and options.")
    budget_name = "all" if budget is None else str(budget)
    rows, cells = [], []
    start = time.perf_counter()
    heads = fit_shared_selector(data, random_state=settings.seed)
    seconds = time.perf_counter() - start
    fitted = [("multitask-cached", heads, seconds, True)]
    if compare:
        single, each = {}, {}
        for name, (X, y) in data.items():
            start = time.perf_counter()
            single[name] = LayerAttention(random_state=settings.seed).fit(X, y)
            each[name] = time.perf_counter() - start
        fitted.append(("layer-attention", single, each, False))
    for method, models, secs, shared in fitted:
        for name, head in models.items():
            Xt, yt = tests[name]
            pred = head.predict(Xt)
            acc, f1 = float(accuracy_score(yt, pred)), float(f1_score(yt, pred, average="macro"))
            s = secs if shared else secs[name]
            rows.append(_row(name, method, acc, f1, s, len(data[name][1]), shared))
            cells.append({"head": method, "task": name, "budget": budget_name, "seed": settings.seed,
                          "n_train": len(data[name][1]), "accuracy": acc, "macro_f1": f1, "fit_seconds": s,
                          "rows": []})
            if method == "multitask-cached":
                head.save(str(out / name), feature_info(metas[name], settings.pooling, None))
    return rows, cells


def _end_to_end(tasks, out: Path, budget, model, settings: FinetuneSettings, compare: bool, progress: bool):
    loaded = [Task(t.name, read_corpus(t.spec("train")), read_corpus(t.spec("test")), budget) for t in tasks]
    runs = [("multitask-finetune", loaded, out / "multitask", True)]
    if compare:
        runs += [(f"finetune-{settings.head}", [task], out / "single" / task.name, False) for task in loaded]
    rows, cells = [], []
    for method, group, folder, shared in runs:
        metrics = finetune(group, folder, model=model, settings=settings, progress=progress)
        for t in metrics["tasks"]:
            rows.append(_row(t["name"], method, t["test_accuracy"], t["test_macro_f1"], metrics["train_seconds"],
                             t["n_train"] + t["n_val"], shared))
        cells += [json.loads(line) for line in (folder / "cells.jsonl").read_text().splitlines()]
    return rows, cells
