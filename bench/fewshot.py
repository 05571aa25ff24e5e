"""Few labels: `finetext finetune` with its defaults against SetFit on the same rows, and the cached heads.

    python bench/fewshot.py [--cells trec:8,sst2:8,bbc:8,trec:32,sst2:32,bbc:32,banking77:8] [--seeds 0,1,2]
                            [--out runs/fewshot]

A cell is (dataset, labels per class, seed). In each, `finetext finetune` (the library call behind the command,
default settings) and SetFit (`finetext baseline setfit`: setfit's published defaults) train on exactly the rows
`finetune --budget K --seed S` draws, one after the other (which goes first alternates with the seed, so a
loaded machine weighs on both alike), and are scored on the whole test set. The cached heads (last-layer and
layer-attention on the packaged MiniLM's cache of the same corpus) fit the same rows, plain and with the
unlabelled pool (the pool prior, `--pool-prior auto`). Every run's folder stays under --out; a cell whose folders are there is read back, so an
interrupted run resumes where it stopped; at the end `finetext compare` draws each dataset's learning curve with
the README's sweep (runs/sweeps/NAME, when there), finetune and SetFit. Datasets: ../shared/data's TREC-6, SST-2 and banking77 with their test
sets; BBC News split 80/20 (stratified, seed 0, as `sweep` splits a cache without --test).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from common import ROOT, SHARED, DATASETS, build, cpu_name

from finetext.extract import CorpusSpec
from finetext.pipeline.baseline import drawn_rows, run_setfit
from finetext.pipeline.compare import compare_runs
from finetext.pipeline.finetune import Task, finetune, read_corpus
from finetext.pipeline.settings import FinetuneSettings
from finetext.pipeline.sweep import SweepConfig, fit_cells, load_data, make_head

CELLS = "trec:8,sst2:8,bbc:8,trec:32,sst2:32,bbc:32,banking77:8"


def records(name: str):
    """(training records, test records) of a dataset, in the row order of its cache's training split."""
    if name == "bbc":
        recs = read_corpus(CorpusSpec("bbc"))
        y = np.array([r.label for r in recs])
        train, test = train_test_split(np.arange(len(recs)), test_size=0.2, stratify=y, random_state=0)
        return [recs[i] for i in train], [recs[i] for i in test]
    train, test, options = DATASETS[name]
    test_options = {k: v for k, v in options.items() if k != "text_column"}  # the derived test CSVs use `text`
    return (read_corpus(CorpusSpec(str(SHARED / train), **options)),
            read_corpus(CorpusSpec(str(SHARED / test), **test_options)))


def run_cell(name: str, task: Task, seed: int, out: Path) -> dict:
    """finetune and SetFit on one cell's rows (each skipped when its folder is there); their metrics."""
    runs = {"finetune": out / "finetune", "setfit": out / "setfit"}
    order = list(runs) if seed % 2 == 0 else list(runs)[::-1]
    for method in order:
        if (runs[method] / "metrics.json").exists():
            continue
        if method == "finetune":
            finetune([task], runs[method], settings=FinetuneSettings(seed=seed), progress=False)
        else:
            run_setfit(task, runs[method], seed=seed, progress=False)
    return {m: json.loads((folder / "metrics.json").read_text()) for m, folder in runs.items()}


def cached_cells(name: str, labels: np.ndarray, seeds: list[int], rows_of: dict[int, np.ndarray]) -> dict[str, list[float]]:
    """Test accuracy of the cached heads on each seed's rows, through the sweep's own loading and fitting: plain,
    and with the unlabelled pool (`--pool-prior auto`: the pool prior where it cross-validates better on the
    labelled rows). labels: the training records', to check that the cache's rows are the records'."""
    train, test = build(name)
    out: dict[str, list[float]] = {}
    for prior in (None, "auto"):
        config = SweepConfig(train=str(train), test=None if test is None else str(test), output="unused",
                             pool_prior=prior)
        data = load_data(config)
        if not np.array_equal(data.y, labels):
            raise SystemExit(f"the {name} cache's training rows are not the records' rows: rebuild runs/caches")
        for head_name in ("last-layer",) if prior else ("last-layer", "layer-attention"):  # auto: for the first only
            fitted = fit_cells(make_head(head_name), data, [rows_of[s] for s in seeds], seeds)
            key = head_name + (" + pool prior" if prior else "")
            out[key] = [float((model.predict(data.mapped[1] if took else data.Xt) == data.yt).mean())
                        for model, took in fitted]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=CELLS, help="dataset:labels-per-class, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fewshot")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {cpu_name()}; seeds {seeds}")
    print("| set | labels/class | finetune acc | SetFit acc | finetune s | SetFit s | time ratio | "
          "cached last-layer | + pool prior | cached layer-attention |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    done: dict[str, list[Path]] = {}
    for cell in args.cells.split(","):
        name, budget = cell.split(":")
        budget = int(budget)
        train, test = records(name)
        results, rows_of = [], {}
        for seed in seeds:
            task = Task(name, train, test, budget)
            rows_of[seed] = drawn_rows(task, seed)
            start = time.perf_counter()
            results.append(run_cell(name, task, seed, args.out / f"{name}-{budget}" / f"seed{seed}"))
            print(f"  {name} {budget}/class seed {seed}: finetune "
                  f"{100 * results[-1]['finetune']['test_accuracy']:.1f}% in "
                  f"{results[-1]['finetune']['train_seconds']:.0f} s ({results[-1]['finetune']['objective']}), "
                  f"SetFit {100 * results[-1]['setfit']['test_accuracy']:.1f}% in "
                  f"{results[-1]['setfit']['train_seconds']:.0f} s [{time.perf_counter() - start:.0f} s]", flush=True)
        acc = {m: 100 * np.mean([r[m]["test_accuracy"] for r in results]) for m in ("finetune", "setfit")}
        sec = {m: np.mean([r[m]["train_seconds"] for r in results]) for m in ("finetune", "setfit")}
        done.setdefault(name, []).extend(args.out / f"{name}-{budget}" / f"seed{s}" / m for s in seeds
                                         for m in ("finetune", "setfit"))
        cached = cached_cells(name, np.array([r.label for r in train]), seeds, rows_of)
        print(f"| {name} | {budget} | {acc['finetune']:.1f} | {acc['setfit']:.1f} | {sec['finetune']:.0f} | "
              f"{sec['setfit']:.0f} | {sec['finetune'] / sec['setfit']:.2f} | "
              + " | ".join(f"{100 * np.mean(cached[k]):.1f}" for k in ("last-layer", "last-layer + pool prior",
                                                                      "layer-attention"))
              + " |", flush=True)
    for name, folders in done.items():  # one learning curve: the README's sweep (10 seeds), finetune and SetFit
        sweep = ROOT / "runs" / "sweeps" / name
        runs = [str(f) for f in ([sweep] if (sweep / "cells.jsonl").exists() else []) + folders]
        compare_runs(runs, str(args.out / f"compare-{name}"), task=name)
        print(f"{name}: finetext compare {' '.join(runs)} -> {args.out / f'compare-{name}'}")


if __name__ == "__main__":
    main()
