"""Fine-tuning against cached heads on TREC-6, and multi-task against one model per task.

    python bench/finetune_trec.py [--seeds-all 3] [--seeds-budget 3] [--budget 64] [--skip-multitask]
                                  [--reuse-finetune]

1. All training data: fine-tuning (LayerAttention on the encoder, bench defaults = the released defaults)
   against every cached head trained on the MiniLM cache; the bar is ≥ 96.4% test accuracy (ULMFiT).
2. `--budget` labels per class, the same rows for both: fine-tuning against the cached LayerAttention,
   accuracy and how many times longer fine-tuning trains.
3. Multi-task at the same budget on TREC-6 + SST-2: a shared selector on the caches and a shared encoder
   end to end, each against one model per task: accuracy and total training seconds.
Every run leaves cells.jsonl under runs/bench/finetune/; the script ends with `finetext compare` over them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from common import ROOT, SHARED, load

from finetext.classify import LastLayerLogReg, LayerAttention, ScalarMix, sample_budget
from finetext.extract import CorpusSpec
from finetext.pipeline.compare import compare_runs
from finetext.pipeline.finetune import Task, finetune, read_corpus
from finetext.pipeline.multitask import parse_task, run_multitask
from finetext.pipeline.settings import FinetuneSettings

OUT = ROOT / "runs" / "bench" / "finetune"


def _cells(folder: Path, cells: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))


def cached_heads(X, y, Xt, yt, budget: int | None, seeds: list[int]) -> list[dict]:
    """Every cached head on the same rows fine-tuning gets; one cell per head × seed."""
    cells = []
    heads = {"last-layer": LastLayerLogReg, "scalar-mix": ScalarMix, "layer-attention": LayerAttention}
    for name, cls in heads.items():
        for seed in seeds:
            rows = np.arange(len(y)) if budget is None else sample_budget(y, per_class=budget, random_state=seed)
            start = time.perf_counter()
            head = cls(random_state=seed).fit(X[rows], y[rows])
            seconds = time.perf_counter() - start
            pred = head.predict(Xt)
            cells.append({"head": name, "task": "trec", "budget": "all" if budget is None else str(budget),
                          "seed": seed, "n_train": len(rows), "accuracy": float(accuracy_score(yt, pred)),
                          "macro_f1": float(f1_score(yt, pred, average="macro")), "fit_seconds": seconds,
                          "rows": []})
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-all", type=int, default=3)
    ap.add_argument("--seeds-budget", type=int, default=3)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--skip-multitask", action="store_true")
    ap.add_argument("--reuse-finetune", action="store_true",
                    help="keep fine-tuning results already in runs/bench/finetune (after a change to cached heads only)")
    args = ap.parse_args()

    def fine_tune(tasks: list[Task], folder: Path, seed: int) -> None:
        if not (args.reuse_finetune and (folder / "metrics.json").exists()):
            finetune(tasks, folder, settings=FinetuneSettings(seed=seed), progress=False)

    train = read_corpus(CorpusSpec(str(SHARED / "trec" / "train.csv")))
    test = read_corpus(CorpusSpec(str(SHARED / "trec" / "test.csv")))
    X, y, Xt, yt = load("trec")
    assert list(y) == [r.label for r in train], "the cache and the CSV disagree on row order"
    runs = []

    print(f"## TREC-6, all {len(train)} training questions")
    _cells(OUT / "cached-all", cached_heads(X, y, Xt, yt, None, [0]))
    runs.append(OUT / "cached-all")
    for seed in range(args.seeds_all):
        folder = OUT / f"finetune-all-seed{seed}"
        fine_tune([Task("trec", train, test)], folder, seed)
        runs.append(folder)

    print(f"## TREC-6, {args.budget} labels per class")
    seeds = list(range(args.seeds_budget))
    _cells(OUT / f"cached-{args.budget}", cached_heads(X, y, Xt, yt, args.budget, seeds))
    runs.append(OUT / f"cached-{args.budget}")
    for seed in seeds:
        folder = OUT / f"finetune-{args.budget}-seed{seed}"
        fine_tune([Task("trec", train, test, args.budget)], folder, seed)
        runs.append(folder)

    table, _ = compare_runs([str(r) for r in runs], str(OUT / "report"), task="trec")
    print(table)
    cells = [json.loads(line) for r in runs for line in (r / "cells.jsonl").read_text().splitlines()]
    for budget in ("all", str(args.budget)):
        def mean(head: str, key: str) -> float:
            return float(np.mean([c[key] for c in cells if c["head"] == head and c["budget"] == budget]))
        ft, la = mean("finetune-layer-attention", "fit_seconds"), mean("layer-attention", "fit_seconds")
        best = max(("last-layer", "scalar-mix", "layer-attention"), key=lambda h: mean(h, "accuracy"))
        print(f"budget {budget}: fine-tuning {100 * mean('finetune-layer-attention', 'accuracy'):.2f}% in {ft:.0f} s; "
              f"best cached head {best} {100 * mean(best, 'accuracy'):.2f}%; cached layer-attention "
              f"{100 * mean('layer-attention', 'accuracy'):.2f}% in {la:.2f} s; fine-tuning takes {ft / la:.0f}x longer")

    if not args.skip_multitask:
        print(f"## multi-task TREC-6 + SST-2, {args.budget} labels per class")
        tasks = [parse_task("trec"), parse_task("sst2")]
        for mode, cached in (("cached", True), ("end-to-end", False)):
            folder = OUT / f"multitask-{mode}"
            if args.reuse_finetune and not cached and (folder / "metrics.json").exists():
                metrics = json.loads((folder / "metrics.json").read_text())
            else:
                metrics = run_multitask(tasks, folder, cached=cached, budget=args.budget,
                                        settings=FinetuneSettings(), progress=False)
            for r in metrics["comparison"]:
                print(f"{mode:>10} {r['task']:>5} {r['method']:<26} {100 * r['accuracy']:.2f}%  {r['train_seconds']:.1f} s")
            print(f"{mode:>10} total training seconds: " +
                  ", ".join(f"{k} {v:.1f}" for k, v in metrics["total_train_seconds"].items()))


if __name__ == "__main__":
    main()
