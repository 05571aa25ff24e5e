"""`finetext simulate`: which texts to label — active-learning campaigns simulated on a cache.

From a seeded, stratified start set (`start` labels per class), every round a strategy (classify.active) picks the
next `step` rows among the training rows whose labels it has not seen, the oracle tells their labels, the head
retrains, and its test accuracy is recorded against the number of labels, until `until` labels. Every strategy ×
seed campaign of a round trains in one `fit_many` call (one stack for the vectorised heads). A round's cells are
appended to `cells.jsonl` in one write, each with the rows labelled so far, so a killed run resumes at the last
round it finished: it refits that round's heads (deterministic) to make the next picks. Outputs as a sweep's:
`results.csv`, `summary.md` (accuracy by labels, and the labels each strategy needs to come within 1/2/5 points of
the best), `learning_curves.png` (one curve per strategy), `config.toml`; `finetext compare` reads the folder.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import tomllib
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from finetext.classify import fit_many
from finetext.classify.active import STRATEGIES, Oracle, Strategy
from finetext.extract.errors import InputError
from finetext.extract.outputs import check_output, exclusive
from finetext.pipeline.publish import publish, publish_text
from finetext.pipeline.settings import CACHED_HEADS, DEFAULT_STRATEGIES
from finetext.pipeline.sweep import SweepConfig, append_cells, check_device, load_data, make_head, read_cells, toml_value


@dataclass
class SimulateConfig:
    """One simulated campaign study. Written back as config.toml; `finetext simulate --config` reruns it."""

    train: str  # training cache: the pool the strategies pick from
    output: str
    test: str | None = None  # test cache; None: a stratified split of the training cache (as sweep splits it)
    test_fraction: float = 0.2
    split_seed: int = 0
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    head: str = "last-layer"
    start: int = 2  # labels per class in the start set
    step: int = 12  # labels per round, in total
    until: int = 384  # labels in total at the end
    seeds: int = 10
    pooling: str = "mean"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.head not in CACHED_HEADS:
            raise InputError(f"head: expected one of {', '.join(CACHED_HEADS)}, got {self.head!r}.")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise InputError(f"strategies: expected distinct names among {', '.join(STRATEGIES)}, got "
                             f"{','.join(self.strategies)}.")
        for name in ("start", "step", "until", "seeds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name}: expected a positive integer, got {getattr(self, name)!r}.")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test fraction: expected a number in (0, 1), got {self.test_fraction}.")
        check_device(self.device)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SimulateConfig":
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls(**{k: v for k, v in data.get("simulate", data).items() if k in cls.__dataclass_fields__})


def run_simulation(config: SimulateConfig, progress: bool = True,
                   strategies: Mapping[str, Strategy] | None = None, oracle: Oracle | None = None) -> Path:
    """Simulate every strategy × seed campaign, then write the report; returns the output folder.

    strategies: name -> function, for strategies of your own (classify.active describes the contract); by
    default config.strategies from classify.active.STRATEGIES. oracle: who tells the training rows' labels
    (default: the cache's own labels, told row by row as they are picked).
    """
    out = Path(config.output)
    check_output(out, folder=True)
    with exclusive(out):  # one writer per study folder
        for leftover in out.glob(".*.tmp"):
            leftover.unlink()
        return _run(config, progress, strategies, oracle)


def load_study(config: SimulateConfig):
    """The caches' features and labels, split as a sweep splits them (sweep.load_data)."""
    return load_data(SweepConfig(train=config.train, output=config.output, test=config.test,
                                 test_fraction=config.test_fraction, split_seed=config.split_seed,
                                 heads=[config.head], pooling=config.pooling))


def rounds(start_total: int, step: int, until: int, pool: int) -> list[int]:
    """Labels in total after each round: start_total, then `step` more each round up to `until` (the last step
    smaller where it does not divide), never beyond the pool."""
    last = min(until, pool)
    out = [min(start_total, last)]
    while out[-1] < last:
        out.append(min(out[-1] + step, last))
    return out


def _run(config: SimulateConfig, progress: bool, strategies: Mapping[str, Strategy] | None,
         oracle: Oracle | None) -> Path:
    out = Path(config.output)
    picker = {name: STRATEGIES[name] for name in config.strategies} if strategies is None else dict(strategies)
    data = load_study(config)
    oracle = oracle or Oracle(data.y)
    data.y = None  # the labels are the oracle's to tell, row by row
    out.mkdir(parents=True, exist_ok=True)
    recorded = asdict(config) | {"output": None, "device": None, "strategies": list(picker)}
    provenance = {k: data.train_meta.get(k) for k in ("corpus_fingerprint", "settings_fingerprint", "model_id")}
    identity = hashlib.sha256(json.dumps([recorded, provenance, (data.test_meta or {}).get("corpus_fingerprint")],
                                         sort_keys=True, default=str).encode()).hexdigest()
    stamp = out / "simulate-id"
    if stamp.exists() and stamp.read_text().strip() != identity:
        raise InputError(f"{out} holds results of another simulation (other caches or settings). Choose another "
                         "--output, or delete that folder to start over.")
    publish_text(stamp, identity + "\n")
    _write_config(config, out / "config.toml", provenance)

    seeds = list(range(config.seeds))
    starts = {seed: oracle.start(config.start, seed) for seed in seeds}
    classes = np.unique(np.concatenate([oracle.label(rows) for rows in starts.values()]))
    plan = rounds(len(starts[0]), config.step, config.until, len(oracle))
    campaigns = [(name, seed) for name in picker for seed in seeds]
    cells_path = out / "cells.jsonl"
    done = {(c["strategy"], c["seed"], c["labels"]): c for c in read_cells(cells_path)}
    # resume: from the last round every campaign finished, with the rows each had labelled by then
    first = max((i for i, n in enumerate(plan) if all((s, seed, n) in done for s, seed in campaigns)), default=0)
    labelled = {k: (np.array(done[(*k, plan[first])]["rows"], dtype=np.int64) if (*k, plan[first]) in done
                    else starts[k[1]]) for k in campaigns}
    known = np.full(len(oracle), -1, dtype=np.int64)  # class codes of the rows told so far
    for rows in labelled.values():
        known[rows] = np.searchsorted(classes, oracle.label(rows))
    head = make_head(config.head, device=config.device)
    bar = tqdm(total=len(plan) * len(campaigns), initial=first * len(campaigns), unit="fit", desc="simulate",
               disable=not progress, dynamic_ncols=True)
    for i in range(first, len(plan)):
        n = plan[i]
        begin = time.perf_counter()
        models = fit_many(head, data.X, known, [labelled[k] for k in campaigns], [seed for _, seed in campaigns])
        per_fit = (time.perf_counter() - begin) / len(campaigns)
        cells = []
        for (name, seed), model in zip(campaigns, models):
            if (name, seed, n) in done:
                continue
            pred = classes[model.predict(data.Xt)]
            cells.append({"head": f"{config.head}, {name}", "strategy": name, "budget": f"{n / len(classes):.4g}",
                          "labels": n, "seed": seed, "n_train": n, "n_classes": len(classes),
                          "accuracy": float(accuracy_score(data.yt, pred)),
                          "macro_f1": float(f1_score(data.yt, pred, average="macro")), "fit_seconds": per_fit,
                          "rows": labelled[name, seed].tolist()})
        append_cells(cells_path, cells)
        bar.update(len(campaigns))
        if i + 1 == len(plan):
            break
        for (name, seed), model in zip(campaigns, models):
            picked = np.zeros(len(oracle), dtype=bool)
            picked[labelled[name, seed]] = True
            fn = picker[name]
            proba = model.predict_proba(data.X) if getattr(fn, "uses_proba", True) else None
            rng = np.random.default_rng([seed, n, zlib.crc32(name.encode())])
            new = np.asarray(fn(data.X, proba, picked, plan[i + 1] - n, rng), dtype=np.int64)
            _check_picks(name, new, picked, plan[i + 1] - n)
            known[new] = np.searchsorted(classes, oracle.label(new))
            labelled[name, seed] = np.concatenate([labelled[name, seed], new])
    bar.close()
    write_simulation_report(out, read_cells(cells_path), config, classes, data.train_meta)
    return out


def _check_picks(name: str, new: np.ndarray, picked: np.ndarray, n: int) -> None:
    """A strategy's picks: n distinct rows of the pool, none labelled before."""
    if new.ndim != 1 or len(new) != n or len(np.unique(new)) != n or new.min(initial=0) < 0 \
            or new.max(initial=0) >= len(picked) or picked[new].any():
        raise ValueError(f"strategy {name!r} must return {n} distinct indices of unlabelled rows; got {new[:10]}"
                         f"{' ...' if len(new) > 10 else ''}.")


def _write_config(config: SimulateConfig, path: Path, provenance: dict[str, Any]) -> None:
    lines = ["[simulate]"] + [f"{k} = {toml_value(v)}" for k, v in asdict(config).items() if v is not None]
    lines += ["\n[train_cache]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in provenance.items() if v is not None]
    publish_text(path, "\n".join(lines) + "\n")


def milestones(labels: list[int], start_total: int) -> list[int]:
    """The rounds a summary table shows: the start, the rounds nearest each doubling of it, and the last."""
    shown = [labels[0]]
    target = 2 * max(start_total, 1)
    while target < labels[-1]:
        near = min(labels, key=lambda n: abs(n - target))
        if near not in shown:
            shown.append(near)
        target *= 2
    return sorted(set(shown + [labels[-1]]))


def write_simulation_report(out: Path, cells: list[dict[str, Any]], config: SimulateConfig, classes: np.ndarray,
                            train_meta: dict[str, Any]) -> None:
    """results.csv, results.json, summary.md and learning_curves.png."""
    import matplotlib.pyplot as plt

    from finetext.pipeline.report import labels_needed, learning_curve_figure, study_title, summarize

    order = {name: i for i, name in enumerate(config.strategies)}
    cells = sorted(cells, key=lambda c: (order.get(c["strategy"], len(order)), c["labels"], c["seed"]))
    columns = ("strategy", "labels", "seed", "accuracy", "macro_f1", "fit_seconds", "rows")

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows([c[k] if k != "rows" else " ".join(map(str, c["rows"])) for k in columns] for c in cells)

    publish(out / "results.csv", write_csv)
    publish(out / "results.json", lambda p: p.write_text(json.dumps(cells)))
    C = len(classes)
    summary = summarize([c | {"head": c["strategy"]} for c in cells])  # one row per strategy × labels
    rows = {(r["head"], round(r["n_train"])): r for r in summary}
    labels = sorted({n for _, n in rows})
    shown = milestones(labels, config.start * C)
    buf = io.StringIO()
    buf.write(f"# Active-learning simulation\n\ntrain: `{config.train}`  test: "
              f"`{config.test or f'{config.test_fraction:.0%} split'}`  head: {config.head}  seeds: {config.seeds}  "
              f"start: {config.start}/class ({labels[0]} labels)  step: {config.step}  until: {labels[-1]} labels  "
              f"classes: {C}\n\nTest accuracy (%), mean ± 95% confidence interval over seeds, by labels in total "
              "(average per class).\n\n")
    buf.write("| strategy | " + " | ".join(f"{n} ({n / C:.3g}/class)" for n in shown) + " |\n|---|"
              + "---|" * len(shown) + "\n")
    for name in dict.fromkeys(r["head"] for r in summary):
        buf.write(f"| {name} | " + " | ".join(
            f"{100 * rows[name, n]['accuracy']:.1f} ± {100 * rows[name, n]['accuracy_ci']:.1f}"
            if (name, n) in rows else "" for n in shown) + " |\n")
    buf.write("\n" + labels_needed(summary, within=(1, 2, 5)) + "\n")
    seconds = sum(c["fit_seconds"] for c in cells)
    buf.write(f"\nTraining: {seconds:.1f} s for {len(cells)} fits (each round's fits share one batched call).\n")
    publish(out / "summary.md", lambda p: p.write_text(buf.getvalue()))
    fig = learning_curve_figure(summary, study_title(config.train, train_meta) + f" — {config.head}, active learning")
    publish(out / "learning_curves.png", lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
