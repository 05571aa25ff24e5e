"""Active learning on the cache: `finetext simulate` on the shared benchmarks, timed.

    python bench/simulate.py [trec sst2 bbc banking77] [--head last-layer] [--seeds 10] [--out runs/simulate]

Per dataset: the default strategies (random, uncertainty, margin, diversity) × 10 seeds, from 2 labels per class
to 64 per class in rounds of 2 per class (for TREC-6 that is `finetext simulate`'s defaults: --start 2 --step 12
--until 384), and the same head on all the training labels. Prints the whole simulation's wall time, each
strategy's accuracy at the end beside random's, and the labels each needs to come within 2 points of the
all-labels accuracy. Each study's folder stays under --out (resumable, readable by `finetext compare`).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import ROOT, build, cpu_name

from finetext.pipeline.report import summarize
from finetext.pipeline.simulate import SimulateConfig, load_study, run_simulation
from finetext.pipeline.sweep import fit_cells, make_head, read_cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["trec", "sst2", "bbc", "banking77"])
    ap.add_argument("--head", default="last-layer")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "runs" / "simulate"))
    args = ap.parse_args()
    print(f"machine: {cpu_name()}; head {args.head}; {args.seeds} seeds")
    print("| set | classes | wall s | strategy | at 64/class | − random | labels to within 2 points of all |")
    print("|---|---:|---:|---|---:|---:|---|")
    for name in args.datasets:
        train, test = build(name)
        probe = SimulateConfig(train=str(train), test=None if test is None else str(test), output="unused",
                               head=args.head)
        data = load_study(probe)
        n_classes = len(np.unique(data.y))
        config = SimulateConfig(train=probe.train, test=probe.test, output=f"{args.out}/{name}-{args.head}",
                                head=args.head, start=2, step=2 * n_classes, until=64 * n_classes, seeds=args.seeds)
        start = time.perf_counter()
        out = run_simulation(config, progress=False)
        wall = time.perf_counter() - start
        model, _ = fit_cells(make_head(args.head), data, [np.arange(len(data.y))], [0])[0]
        everything = float((model.predict(data.Xt) == data.yt).mean())
        cells = read_cells(out / "cells.jsonl")
        mean = {(r["head"], round(r["n_train"])): r["accuracy"]
                for r in summarize([c | {"head": c["strategy"]} for c in cells])}
        labels = sorted({n for _, n in mean})
        for strategy in config.strategies:
            needed = next((n for n in labels if 100 * (everything - mean[strategy, n]) <= 2), None)
            print(f"| {name} | {n_classes} | {wall:.0f} | {strategy} | {100 * mean[strategy, labels[-1]]:.1f} | "
                  f"{100 * (mean[strategy, labels[-1]] - mean['random', labels[-1]]):+.1f} | "
                  + (f"{needed} ({needed / n_classes:.3g}/class)" if needed else f"> {labels[-1]}")
                  + f" (all {len(data.y)}: {100 * everything:.1f}) |", flush=True)
        (out / "bench.json").write_text(json.dumps({"wall_seconds": wall, "all_labels_accuracy": everything}))


if __name__ == "__main__":
    main()
