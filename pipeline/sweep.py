"""`finetext sweep`: label budgets × seeds × heads on cached features → a results folder.

Resumable by construction: every finished cell is appended to `cells.jsonl` (one JSON line, flushed and
fsynced); a rerun skips the cells already there, so no row is ever written twice. The tables and plots are
written at the end with os.replace.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from finetext.classify import LastLayerLogReg, LayerAttention, PoolPrior, ScalarMix, fit_many, sample_budget
from finetext.classify.heads import training_device
from finetext.classify.pool_prior import prior_helps
from finetext.extract import InputError, open_cache
from finetext.extract.outputs import check_output, exclusive
from finetext.pipeline.publish import publish_text

HEADS = {"last-layer": LastLayerLogReg, "scalar-mix": ScalarMix, "layer-attention": LayerAttention}
CELL_KEYS = ("head", "budget", "seed")
UNRECORDED = ("device", "verbose")  # head params that do not change a sweep's numbers: not part of its identity
# pool_prior="auto": the heads that may take the prior, per fit (the vectorised heads lost with it at every budget
# measured), and the power it offers them
AUTO_PRIOR_HEADS = (LastLayerLogReg,)
AUTO_PRIOR_POWER = 1.0


def make_head(name: str, params: dict[str, Any] | None = None, device: str = "cpu", verbose: bool = False) -> Any:
    """A head by its CLI name with `params`; the vectorised heads (scalar-mix, layer-attention) train on
    `device` unless params say otherwise, with a bar over their epochs when `verbose`. Logistic regression always
    runs on the CPU, without a bar."""
    cls = HEADS[name]
    own = cls().get_params()
    extras = {k: v for k, v in (("device", device), ("verbose", verbose)) if k in own}
    return cls(**{**extras, **(params or {})})


def head_params(heads: Sequence[str], precision: str = "fp32") -> dict[str, dict[str, Any]]:
    """Per-head params from the CLI's --precision, for the heads that have it (scalar-mix, layer-attention); only
    values other than the heads' defaults, so the params a sweep records stay as they were."""
    defaults = {h: HEADS[h]().get_params() for h in heads if h in HEADS}  # a head without the param never gets it
    return {h: {"precision": precision} for h, d in defaults.items() if d.get("precision", precision) != precision}


def check_pool_prior(value: object) -> None:
    """A sweep's or a trained head's pool_prior: None, "auto" or a power >= 0."""
    if value not in (None, "auto") and not (isinstance(value, (int, float)) and value >= 0):
        raise InputError(f"pool prior: expected 'auto' or a power >= 0 (1: the pool's covariance), got {value!r}.")


def prior_power(pool_prior: float | str) -> float:
    """The PoolPrior power of a pool_prior setting: AUTO_PRIOR_POWER for "auto"."""
    return AUTO_PRIOR_POWER if pool_prior == "auto" else float(pool_prior)


def check_device(device: str) -> None:
    """Refuse a device the heads cannot train on before any work starts (InputError, exit 2 in the CLI)."""
    try:
        training_device(device, "LayerAttention")
    except ValueError as err:
        raise InputError(f"--device: {err}") from None


@dataclass
class SweepConfig:
    """One experiment. Written back as config.toml; `finetext sweep --config config.toml` reruns it."""

    train: str  # training cache
    output: str  # results folder
    test: str | None = None  # test cache; None: a stratified split of the training cache
    test_fraction: float = 0.2  # used when test is None
    split_seed: int = 0
    heads: list[str] = field(default_factory=lambda: list(HEADS))
    budgets: list[str] = field(default_factory=lambda: ["4", "8", "16", "32", "64"])  # per class; "all" too
    budget_mode: str = "per-class"  # per-class | total
    seeds: int = 10
    pooling: str = "mean"
    layers: list[int] | None = None  # hidden states to use; None: all
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # head -> hyperparameters
    device: str = "cpu"  # where scalar-mix and layer-attention train: cpu, cuda, cuda:N, mps or auto
    # PoolPrior's power, fitted on every training row (labels unread), for every head; "auto": power 1 for logistic
    # regression where it cross-validates better on a cell's labelled rows, none for the others; None: off
    pool_prior: float | str | None = None

    def __post_init__(self) -> None:
        bad = [h for h in self.heads if h not in HEADS]
        if bad or not self.heads:
            raise InputError(f"heads: expected a comma-separated subset of {','.join(HEADS)}, got {','.join(self.heads)}.")
        self.budgets = [str(b).strip() for b in self.budgets]
        for b in self.budgets:
            if b != "all" and not (b.isdigit() and int(b) > 0):
                raise InputError(f"budgets: expected positive integers or 'all', got {b!r}.")
        if self.budget_mode not in ("per-class", "total"):
            raise InputError(f"budget mode: expected per-class or total, got {self.budget_mode!r}.")
        if self.seeds < 1:
            raise InputError(f"seeds: expected a positive integer, got {self.seeds}.")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test fraction: expected a number in (0, 1), got {self.test_fraction}.")
        check_device(self.device)
        check_pool_prior(self.pool_prior)
        unknown = set(self.params) - set(self.heads)
        if unknown:
            raise InputError(f"params given for heads not in the sweep: {sorted(unknown)}.")

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SweepConfig":
        with open(path, "rb") as f:
            data = tomllib.load(f)
        known = set(cls.__dataclass_fields__)
        config = {k: v for k, v in data.get("sweep", data).items() if k in known}
        return cls(**config)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_config(config: SweepConfig, path: Path, provenance: dict[str, Any]) -> None:
    """The resolved config as TOML, with library versions and cache fingerprints as comments-free tables."""
    lines = ["[sweep]"]
    data = asdict(config)
    params = data.pop("params")
    for key, value in data.items():
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
    for head, hp in params.items():
        lines.append(f"\n[sweep.params.{json.dumps(head)}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in hp.items()]
    for section, values in provenance.items():
        lines.append(f"\n[{section}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items() if v is not None]
    publish_text(path, "\n".join(lines) + "\n")


@dataclass
class Data:
    X: np.ndarray  # (n_train, layers, hidden)
    y: np.ndarray  # label strings
    Xt: np.ndarray
    yt: np.ndarray
    train_meta: dict[str, Any]
    test_meta: dict[str, Any] | None
    mapped: tuple[np.ndarray, np.ndarray] | None = None  # pool_prior="auto": the prior's X and Xt beside the raw


def load_data(config: SweepConfig) -> Data:
    """The sweep's features and labels; with a pool prior, both sides mapped by the one fitted on the training rows
    (every one, labels unread; never the test rows): in place of the raw features, or beside them for "auto"."""
    data = _read_data(config)
    if config.pool_prior is not None and (config.pool_prior != "auto"
                                          or any(issubclass(HEADS[h], AUTO_PRIOR_HEADS) for h in config.heads)):
        prior = PoolPrior(power=prior_power(config.pool_prior)).fit(data.X)
        mapped = prior.transform(data.X), prior.transform(data.Xt)
        if config.pool_prior == "auto":
            data.mapped = mapped
        else:
            data.X, data.Xt = mapped
    return data


def fit_cells(head: Any, data: Data, rows: Sequence[np.ndarray], seeds: Sequence[int]) -> list[tuple[Any, bool | None]]:
    """fit_many's heads, each with whether it took the pool prior (None: no choice was made). Under
    pool_prior="auto" logistic regression takes the prior's features for the sets where they cross-validate
    better (classify.pool_prior.prior_helps); the other heads never do (AUTO_PRIOR_HEADS)."""
    if data.mapped is None or not isinstance(head, AUTO_PRIOR_HEADS):
        return [(model, None) for model in fit_many(head, data.X, data.y, rows, seeds)]
    takes = prior_helps(data.X, data.mapped[0], data.y, rows, seeds, layer=head.layer)
    fitted: list[Any] = [None] * len(rows)
    for choice, X in ((False, data.X), (True, data.mapped[0])):
        picked = [i for i, t in enumerate(takes) if t == choice]
        models = fit_many(head, X, data.y, [rows[i] for i in picked], [seeds[i] for i in picked]) if picked else []
        for i, model in zip(picked, models):
            fitted[i] = model
    return list(zip(fitted, takes))


def _read_data(config: SweepConfig) -> Data:
    with open_cache(config.train) as c:
        meta = c.meta
        X = c.features(config.pooling, layers=config.layers)
        y = c.label_strings()
    check_classes(y, config.train)
    if config.test is None:
        try:
            X, Xt, y, yt = train_test_split(X, y, test_size=config.test_fraction, stratify=y,
                                            random_state=config.split_seed)
        except ValueError as exc:  # too few rows, or a class of one, to split stratified
            raise InputError(f"{config.train}: {len(y)} documents of {len(set(y.tolist()))} classes cannot be split "
                             f"into a stratified test fraction of {config.test_fraction:g} ({exc}). Give --test "
                             "CACHE, or another --test-fraction.") from None
        return Data(X, y, Xt, yt, meta, None)
    with open_cache(config.test) as c:
        test_meta = c.meta
        Xt = c.features(config.pooling, layers=config.layers)
        yt = c.label_strings()
    if test_meta["settings_fingerprint"] != meta["settings_fingerprint"]:
        changed = [f"  {k}: train {meta['settings'].get(k)!r}, test {test_meta['settings'].get(k)!r}"
                   for k in meta["settings"] if meta["settings"].get(k) != test_meta["settings"].get(k)]
        raise InputError(
            f"the caches were built with different settings, so their features are not comparable:\n"
            f"  {config.train}: settings fingerprint {meta['settings_fingerprint']}\n"
            f"  {config.test}: settings fingerprint {test_meta['settings_fingerprint']}\n" + "\n".join(changed)
            + "\nFix: extract both with the same model and options (finetext extract ... --force)."
        )
    return Data(X, y, Xt, yt, meta, test_meta)


def check_classes(y: np.ndarray, where: str) -> None:
    """Refuse labels of fewer than two classes before any training: nothing to classify."""
    names = sorted(set(y.tolist()))
    if len(names) < 2:
        raise InputError(f"{where}: every document has the label {names[0] if names else None!r}; a classifier "
                         "needs two classes or more. Extract a corpus with at least two labels.")


def budget_rows(y: np.ndarray, per_class: int | None, seed: int, where: str) -> np.ndarray:
    """Sorted rows of a per-class budget (all rows for None); a class smaller than the budget is an InputError
    naming `where` (the cache or task), the short classes and the largest budget that fits."""
    if per_class is None:
        return np.arange(len(y))
    if per_class < 1:
        raise InputError(f"{where}: --budget must be a positive number of labels per class, got {per_class}.")
    short = short_classes(y, per_class)
    if short:
        raise InputError(f"{where}: --budget {per_class} asks for {per_class} labels per class, but "
                         f"{_listed(short)} {'has' if len(short) == 1 else 'have'} fewer. Use --budget "
                         f"{min(Counter(y.tolist()).values())} or less, or leave --budget out to train on every row.")
    return sample_budget(y, per_class=per_class, random_state=seed)


def short_classes(y: np.ndarray, per_class: int) -> dict[str, int]:
    """Classes with fewer than `per_class` rows -> their row counts."""
    return {str(c): n for c, n in sorted(Counter(y.tolist()).items(), key=lambda kv: str(kv[0])) if n < per_class}


def _listed(counts: dict[str, int], shown: int = 3) -> str:
    """'class ABBR (86 rows), class LOC (40 rows) and 2 more classes' for messages."""
    named = [f"class {c} ({n} rows)" for c, n in list(counts.items())[:shown]]
    more = len(counts) - shown
    return ", ".join(named) + (f" and {more} more class{'es' if more > 1 else ''}" if more > 0 else "")


def check_budgets(config: SweepConfig, y: np.ndarray) -> dict[str, dict[str, int]]:
    """Refuse budgets the training rows cannot give (InputError); per-class budget -> its short classes, whose
    cells take every row those classes have (the sweep warns, and the tables mark the budget with ≤)."""
    n_classes = len(set(y.tolist()))
    numeric = [int(b) for b in config.budgets if b != "all"]
    if config.budget_mode == "total":
        bad = [k for k in numeric if not n_classes <= k <= len(y)]
        if bad:
            raise InputError(f"{config.train}: --budgets {','.join(map(str, bad))} in total: a total budget needs "
                             f"at least one label per class and no more than the rows there are, so from "
                             f"{n_classes} to {len(y)}.")
        return {}
    return {str(k): short for k in numeric if (short := short_classes(y, k))}


def _rows_for(config: SweepConfig, y: np.ndarray, budget: str, seed: int) -> np.ndarray:
    if budget == "all":
        return np.arange(len(y))
    k = int(budget)
    if config.budget_mode == "total":
        return sample_budget(y, total=k, random_state=seed)
    return sample_budget(y, per_class=k, random_state=seed, fallback="all")


def read_cells(path: Path) -> list[dict[str, Any]]:
    """Finished cells; a torn last line (the run was killed while writing it) is dropped, and a whole last line
    that lost only its newline gets it back, so the next cell appended starts a line of its own."""
    if not path.exists():
        return []
    cells, good_bytes, ends_line = [], 0, True
    with open(path, "rb") as f:
        for line in f:
            try:
                cells.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
            ends_line = line.endswith(b"\n")
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    if not ends_line:
        with open(path, "ab") as f:
            f.write(b"\n")
    return cells


def append_cells(path: Path, cells: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for cell in cells:
            f.write(json.dumps(cell) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_sweep(config: SweepConfig, progress: bool = True, replace_other: bool = False, verbose: bool = False) -> Path:
    """Train the whole grid on cached features, evaluate each fit on the test set, write the report.

    progress: one bar over the grid's cells; verbose: also each stack's bar over its epochs.
    replace_other: start over when the folder holds another sweep's results (else that is an error).
    """
    out = Path(config.output)
    check_output(out, folder=True)
    with exclusive(out):  # one writer per sweep folder: a second sweep into it is refused at once
        for leftover in out.glob(".*.tmp"):  # files a killed run was publishing
            leftover.unlink()
        return _run_sweep(config, progress, replace_other, verbose)


def _run_sweep(config: SweepConfig, progress: bool, replace_other: bool, verbose: bool) -> Path:
    """run_sweep, holding the output folder's lock."""
    from finetext.pipeline.report import write_report

    out = Path(config.output)
    data = load_data(config)
    out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "train_cache": {k: data.train_meta.get(k) for k in ("corpus_fingerprint", "settings_fingerprint", "model_id")},
        "test_cache": {k: (data.test_meta or {}).get(k) for k in ("corpus_fingerprint", "settings_fingerprint")},
        "library_versions": data.train_meta.get("library_versions", {}),
    }
    # every head's full hyperparameters, defaults included: a release that changes a default is another sweep
    # where heads train is not what they compute (a GPU gives the same heads up to rounding): a sweep started on
    # one device resumes on another
    resolved = {h: {k: v for k, v in make_head(h, config.params.get(h)).get_params().items() if k not in UNRECORDED}
                for h in config.heads}
    recorded = asdict(config) | {"output": None, "device": None}
    if config.pool_prior is None:  # sweeps from before the option keep their identity
        del recorded["pool_prior"]
    identity = hashlib.sha256(json.dumps([recorded, provenance["train_cache"],
                                          provenance["test_cache"], resolved], sort_keys=True,
                                         default=str).encode()).hexdigest()
    short = check_budgets(config, data.y)
    n_classes = len(set(data.y.tolist()))
    for budget, counts in short.items():
        tqdm.write(f"finetext: warning: budget {budget}/class: {_listed(counts)} {'has' if len(counts) == 1 else 'have'} "
                   f"fewer rows; {'its' if len(counts) == 1 else 'their'} cells take all of them (tables say ≤{budget}/class).",
                   file=sys.stderr)
    cells_path = out / "cells.jsonl"
    stamp = out / "sweep-id"
    if stamp.exists() and stamp.read_text().strip() != identity:
        if replace_other:
            cells_path.unlink(missing_ok=True)
            (out / "layer_probe.json").unlink(missing_ok=True)
        else:
            raise InputError(f"{out} holds results of another sweep (other caches or settings). Choose another "
                             "--output, or delete that folder to start over.")
    publish_text(stamp, identity + "\n")
    write_config(config, out / "config.toml", provenance)
    done = {tuple(c[k] for k in CELL_KEYS) for c in read_cells(cells_path)}
    # all the data is the same rows whatever the seed: one fit, not `seeds` copies of it
    seeds_of = {b: [0] if b == "all" else list(range(config.seeds)) for b in config.budgets}
    grid = [(h, b, s) for h in config.heads for b in config.budgets for s in seeds_of[b]]
    todo = list(dict.fromkeys((h, b) for h, b, s in grid if (h, b, s) not in done))
    # a GPU trains every budget of a head in one padded stack (classify.heads), so there it gets them in one
    # fit_many call; on a CPU, whose stacks hold one budget each anyway, a call per budget saves cells sooner
    per_head = training_device(config.device).type != "cpu"
    calls: dict[tuple[str, ...], list[str]] = {}
    for head_name, budget in todo:
        calls.setdefault((head_name,) if per_head else (head_name, budget), []).append(budget)
    with tqdm(total=len(grid), initial=sum(cell in done for cell in grid), unit="fit", desc="sweep",
              disable=not progress, dynamic_ncols=True) as bar:
        for (head_name, *_), budgets in calls.items():
            jobs = [(b, s) for b in budgets for s in seeds_of[b] if (head_name, b, s) not in done]
            rows = [_rows_for(config, data.y, b, s) for b, s in jobs]
            head = make_head(head_name, config.params.get(head_name), config.device, verbose=verbose)
            start = time.perf_counter()
            fitted = fit_cells(head, data, rows, [s for _, s in jobs])
            per_fit = (time.perf_counter() - start) / len(fitted)  # the batch's time, shared evenly
            cells = []
            for (budget, seed), r, (model, took_prior) in zip(jobs, rows, fitted):
                pred = model.predict(data.mapped[1] if took_prior else data.Xt)
                cell = {"head": head_name, "budget": budget, "seed": seed, "n_train": len(r), "n_classes": n_classes,
                        "accuracy": float(accuracy_score(data.yt, pred)),
                        "macro_f1": float(f1_score(data.yt, pred, average="macro")),
                        "fit_seconds": per_fit, "rows": r.tolist()}
                if config.pool_prior is not None and (config.pool_prior != "auto" or took_prior is not None):
                    cell["pool_prior"] = config.pool_prior  # the features it saw: compare names the method by it
                if took_prior is not None:
                    cell["pool_prior_taken"] = took_prior
                if budget in short:
                    cell["short_classes"] = short[budget]
                if hasattr(model, "layer_weights_"):
                    cell["layer_weights"] = [float(w) for w in model.layer_weights_]
                cells.append(cell)
            append_cells(cells_path, cells)
            bar.update(len(cells))
    cells = read_cells(cells_path)
    write_report(out, cells, config, data)
    return out
