"""`finetext compare`: cached heads, fine-tuning and multi-task runs in one table and two plots.

Every run folder (sweep, finetune, multitask) keeps its finished fits in `cells.jsonl` with the same keys
(head, budget, seed, n_train, accuracy, macro_f1, fit_seconds; `task` when the run names one), so a
comparison is their union: accuracy with CIs and training seconds per method and budget.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from finetext.extract import InputError
from finetext.pipeline.publish import publish
from finetext.pipeline.report import budget_key, learning_curve_figure, plt, summarize, summary_table

COLUMNS = ("task", "head", "budget", "seed", "n_train", "accuracy", "macro_f1", "fit_seconds")


def collect(runs: Sequence[str], task: str | None = None) -> list[dict[str, Any]]:
    """Cells of every run; with `task`, only that task's (runs that name none count as it)."""
    from finetext.pipeline.sweep import read_cells

    cells = []
    for run in runs:
        path = Path(run) / "cells.jsonl"
        if not path.exists():
            raise InputError(f"{run}: no cells.jsonl; give folders written by finetext sweep, finetune or multitask.")
        for cell in read_cells(path):
            cell.setdefault("task", task or "")
            if task is None or cell["task"] == task:
                cells.append(cell)
    if not cells:
        raise InputError(f"no results for task {task!r} in {', '.join(runs)}.")
    for c in cells:  # a sweep with --pool-prior is another method than one without, on the same rows and seeds
        if "pool_prior" in c:
            prior = c["pool_prior"]
            c["head"] = f"{c['head']}, pool prior {prior if isinstance(prior, str) else format(prior, 'g')}"
    if len({c["task"] for c in cells}) > 1:  # one line per task and method
        for c in cells:
            c["head"] = f"{c['task']}: {c['head']}"
    seen, unique = set(), []
    for c in cells:  # the same fit listed by two runs (a multitask folder and its single runs) counts once
        key = (c["head"], c["budget"], c["seed"])
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def seconds_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: mean training seconds per method and budget."""
    return summary_table(summary, cell=lambda r: f"{r['fit_seconds']:.2f}", label="method")


def _plot_time(path: Path, summary: list[dict[str, Any]]) -> None:
    """Accuracy against training seconds (log x), one marker series per method, budgets labelled."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for head in dict.fromkeys(r["head"] for r in summary):
        rows = sorted((r for r in summary if r["head"] == head), key=lambda r: budget_key(r["budget"]))
        x = np.array([max(r["fit_seconds"], 1e-3) for r in rows])
        y = np.array([100 * r["accuracy"] for r in rows])
        ax.errorbar(x, y, yerr=[100 * r["accuracy_ci"] for r in rows], marker="o", capsize=3, label=head)
        for r, xi, yi in zip(rows, x, y):
            ax.annotate(r["budget"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds per fit (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against training time (labels: budget per class)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    publish(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def compare_runs(runs: Sequence[str], output: str, task: str | None = None) -> tuple[str, list[Path]]:
    """Write results.csv/json, summary.md, learning_curves.png and accuracy_vs_time.png; return the table."""
    cells = collect(runs, task)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(cells)
    table = summary_table(summary)

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows([c.get(k, "") for k in COLUMNS] for c in cells)

    paths = [out / name for name in ("results.csv", "results.json", "summary.md", "learning_curves.png",
                                     "accuracy_vs_time.png")]
    publish(paths[0], write_csv)
    publish(paths[1], lambda p: p.write_text(json.dumps(cells)))
    buf = io.StringIO()
    buf.write(f"# Comparison\n\nruns: {', '.join(f'`{r}`' for r in runs)}\n\n"
              "Test accuracy (%), mean ± 95% confidence interval over seeds.\n\n" + table +
              "\n\nTraining seconds per fit (a batched sweep's time shared evenly among its fits; a multi-task "
              "model's time is for all its tasks).\n\n" + seconds_table(summary) + "\n")
    publish(paths[2], lambda p: p.write_text(buf.getvalue()))
    fig = learning_curve_figure(summary)
    publish(paths[3], lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    _plot_time(paths[4], summary)
    return table, paths
