"""Sweeps on real caches (tiny BERT over real BBC text): outputs, plots, resume after SIGKILL, config round trip."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from finetext.classify import LastLayerLogReg, PoolPrior, load_head
from finetext.classify.pool_prior import prior_helps
from finetext.extract import InputError, extract_corpus, open_cache
from finetext.pipeline.cli import main
from finetext.pipeline.compare import collect
from finetext.pipeline.report import learning_curve_figure, summarize
from finetext.pipeline.sweep import SweepConfig, budget_rows, load_data, read_cells, run_sweep
from finetext.pipeline.workflows import evaluate_head, predict_texts


@pytest.fixture(scope="module")
def bbc_cache(tmp_path_factory, bbc_slice, tiny_bert):
    out = tmp_path_factory.mktemp("cache") / "bbc.h5"
    extract_corpus(str(bbc_slice), out, model=str(tiny_bert), max_length=64, device="cpu", progress=False)
    return out


def small_config(cache, output, heads=("last-layer", "scalar-mix", "layer-attention"), **kw):
    return SweepConfig(train=str(cache), output=str(output), budgets=["1", "3"], seeds=2, test_fraction=0.3,
                       heads=list(heads), **kw)


def test_sweep_writes_tables_plots_and_config(tmp_path, bbc_cache, capsys):
    blas_threads = [pool["num_threads"] for pool in threadpool_info()]
    out = run_sweep(small_config(bbc_cache, tmp_path / "s"), progress=False)
    assert [pool["num_threads"] for pool in threadpool_info()] == blas_threads  # the parallel probes restore BLAS
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2
    assert {"head", "budget", "seed", "accuracy", "macro_f1", "fit_seconds", "rows"} <= set(rows[0])
    assert {(r["head"], r["budget"], r["seed"]) for r in rows} == {
        (h, b, str(s)) for h in ("last-layer", "scalar-mix", "layer-attention") for b in ("1", "3") for s in (0, 1)}
    assert all(len(r["rows"].split()) == 5 * int(r["budget"]) for r in rows)  # 5 classes, k per class
    assert len(json.loads((out / "results.json").read_text())) == 12
    assert "| layer-attention |" in (out / "summary.md").read_text()
    for name in ("learning_curves.png", "layer_weights.png", "layer_probe.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and plt.imread(out / name).ndim == 3
    cells = read_cells(out / "cells.jsonl")
    fig = learning_curve_figure(summarize(cells))
    assert len(fig.axes[0].get_lines()) == 3  # one line per head
    assert fig.axes[0].get_title() == "mean ± 95% CI over 2 seeds"
    plt.close(fig)
    fewer = [c for c in cells if c["head"] != "last-layer" or c["seed"] == 0]  # a head with one seed fewer
    fig = learning_curve_figure(summarize(fewer))
    assert fig.axes[0].get_title() == "mean ± 95% CI over 1–2 seeds (per point)"
    plt.close(fig)
    toml = (out / "config.toml").read_text()
    assert "corpus_fingerprint" in toml and "torch" in toml


def timeless(cells: list[dict]) -> list[dict]:
    """Cells without their fit times, which differ between runs."""
    return [{k: v for k, v in c.items() if k != "fit_seconds"} for c in cells]


def test_config_round_trip_reproduces_the_table(tmp_path, bbc_cache):
    first = run_sweep(small_config(bbc_cache, tmp_path / "a", heads=["last-layer", "layer-attention"]), progress=False)
    again = SweepConfig.from_toml(first / "config.toml")
    again.output = str(tmp_path / "b")
    second = run_sweep(again, progress=False)
    assert timeless(read_cells(first / "cells.jsonl")) == timeless(read_cells(second / "cells.jsonl"))


def test_progress_bars_do_not_make_another_sweep(tmp_path, bbc_cache, capsys):
    config = small_config(bbc_cache, tmp_path / "s", heads=["layer-attention"])
    quiet = run_sweep(config, progress=False)
    cells = read_cells(quiet / "cells.jsonl")
    for verbose in (False, True):
        (quiet / "cells.jsonl").write_text("")  # forget the cells, keep the sweep's identity: a rerun fits again
        run_sweep(config, progress=True, verbose=verbose)  # the same sweep, the same numbers
        assert timeless(read_cells(quiet / "cells.jsonl")) == timeless(cells)
        bars = capsys.readouterr().err
        assert "sweep" in bars and ("epoch" in bars) == verbose  # epoch bars only when verbose


def test_a_folder_of_another_sweep_is_refused_or_replaced(tmp_path, bbc_cache):
    out = tmp_path / "s"
    run_sweep(small_config(bbc_cache, out, heads=["last-layer"]), progress=False)
    changed = small_config(bbc_cache, out, heads=["last-layer"])
    changed.params = {"last-layer": {"C": 0.1}}
    with pytest.raises(InputError, match="holds results of another sweep"):
        run_sweep(changed, progress=False)
    run_sweep(changed, progress=False, replace_other=True)  # the demo's way: start over
    assert all(c["head"] == "last-layer" for c in read_cells(out / "cells.jsonl"))
    assert len(read_cells(out / "cells.jsonl")) == len(changed.budgets) * changed.seeds


def test_sweep_refuses_caches_of_different_settings(tmp_path, bbc_cache, bbc_slice, tiny_bert):
    other = tmp_path / "other.h5"
    extract_corpus(str(bbc_slice), other, model=str(tiny_bert), max_length=32, device="cpu", progress=False)
    with pytest.raises(InputError) as err:
        run_sweep(small_config(bbc_cache, tmp_path / "s", test=str(other)), progress=False)
    assert "different settings" in str(err.value) and "max_length: train 64, test 32" in str(err.value)


@pytest.mark.slow
def test_killed_sweep_resumes_without_duplicate_rows(tmp_path, bbc_cache):
    out = tmp_path / "killed"
    args = ["sweep", "--train", str(bbc_cache), "--output", str(out), "--budgets", "1,2,3",
            "--seeds", "4", "--test-fraction", "0.3", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "finetext", *args])
    cells = out / "cells.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cells.exists() and cells.read_text().count("\n") >= 1):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(read_cells(cells))
    assert 1 <= before < 3 * 3 * 4, before
    assert main(args + ["--device", "auto"]) == 0  # resumed on another device: the same sweep
    keys = [(c["head"], c["budget"], c["seed"]) for c in read_cells(cells)]
    assert len(keys) == len(set(keys)) == 3 * 3 * 4


def test_a_last_cell_without_its_newline_is_kept_and_the_resume_completes(tmp_path, bbc_cache):
    config = small_config(bbc_cache, tmp_path / "s", heads=["last-layer"])
    cells = read_cells(run_sweep(config, progress=False) / "cells.jsonl")
    path = tmp_path / "s" / "cells.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]).rstrip(b"\n"))  # killed between a cell's text and its newline
    run_sweep(config, progress=False)
    assert timeless(read_cells(path)) == timeless(cells)  # every cell once, none lost
    assert path.read_bytes().count(b"\n") == len(cells)


def test_train_evaluate_predict(tmp_path, bbc_cache, bbc_slice, capsys):
    head = tmp_path / "head"
    assert main(["train", "--train", str(bbc_cache), "--head", "layer-attention", "--output", str(head),
                 "--budget", "3", "--device", "auto"]) == 0  # a GPU when the machine has one
    assert json.loads((head / "config.json").read_text())["params"]["device"] == "auto"
    assert main(["train", "--train", str(bbc_cache), "--output", str(tmp_path / "h2"), "--device", "gpu"]) == 2
    assert "--device: LayerAttention: device must be 'cpu', 'cuda'" in capsys.readouterr().err
    assert not (tmp_path / "h2").exists()
    assert main(["predict", "--head", str(tmp_path), "--text", "Shares fell."]) == 2  # not a head folder
    assert "has no config.json, so it is not a saved head" in capsys.readouterr().err
    assert main(["evaluate", "--head", str(head), "--cache", str(bbc_cache)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and (head / "confusion_matrix.png").exists()
    assert json.loads((head / "metrics.json").read_text())["n_docs"] == 30
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--head", str(head), "--input", str(bbc_slice), "--output", str(preds)]) == 0
    with open(preds) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and set(rows[0]) == {"id", "text", "label", "p_business", "p_entertainment",
                                                "p_politics", "p_sports", "p_tech"}
    # the same encoder over the same texts gives the cached features, so the same predictions as evaluate
    assert main(["predict", "--head", str(head), "--text", "Shares fell on the stock market."]) == 0
    assert main(["predict", "--head", str(head), "--text", "  "]) == 2


def test_an_auto_pool_prior_is_logistic_regressions_per_cell_choice(tmp_path, bbc_cache):
    heads = ["last-layer", "layer-attention"]
    plain = run_sweep(small_config(bbc_cache, tmp_path / "plain", heads=heads), progress=False)
    config = small_config(bbc_cache, tmp_path / "auto", heads=heads, pool_prior="auto")
    out = run_sweep(config, progress=False)
    data, raw = load_data(config), load_data(small_config(bbc_cache, tmp_path / "x"))
    prior = PoolPrior().fit(raw.X)
    assert data.mapped is not None and np.array_equal(data.X, raw.X)  # the raw features, the mapped beside them
    no_regression = small_config(bbc_cache, tmp_path / "y", heads=["layer-attention"], pool_prior="auto")
    assert load_data(no_regression).mapped is None  # nothing would take it: not computed
    cells = {(c["head"], c["budget"], c["seed"]): c for c in read_cells(out / "cells.jsonl")}
    for key, cell in cells.items():
        if key[0] == "layer-attention":  # never the prior: the plain sweep's numbers
            assert "pool_prior" not in cell and "pool_prior_taken" not in cell
            continue
        rows = np.array(cell["rows"])
        took = prior_helps(data.X, data.mapped[0], data.y, [rows], [cell["seed"]])[0]
        assert cell["pool_prior"] == "auto" and cell["pool_prior_taken"] == took
        X, Xt = (prior.transform(data.X), prior.transform(data.Xt)) if took else (data.X, data.Xt)
        assert cell["accuracy"] == pytest.approx(LastLayerLogReg(random_state=cell["seed"]).fit(
            X[rows], data.y[rows]).score(Xt, data.yt))
    assert not any(c["budget"] == "1" and c.get("pool_prior_taken") for c in cells.values())  # one row a class
    la = [c for c in read_cells(plain / "cells.jsonl") if c["head"] == "layer-attention"]
    assert timeless(la) == timeless([c for c in cells.values() if c["head"] == "layer-attention"])
    taken = sum(c.get("pool_prior_taken", False) for c in cells.values())
    assert f"pool prior: auto (taken by last-layer in {taken} of 4 fits)" in (out / "summary.md").read_text()
    assert SweepConfig.from_toml(out / "config.toml").pool_prior == "auto"
    # beside the plain sweep in one comparison: logistic regression twice, the identical attention fits once
    methods = {c["head"] for c in collect([str(plain), str(out)])}
    assert methods == {"last-layer", "last-layer, pool prior auto", "layer-attention"}


def test_a_head_trained_with_a_pool_prior_carries_it_to_evaluate_and_predict(tmp_path, bbc_cache, bbc_slice, capsys):
    head = tmp_path / "head"
    assert main(["train", "--train", str(bbc_cache), "--head", "last-layer", "--budget", "3", "--pool-prior", "1",
                 "-o", str(head), "--quiet"]) == 0
    assert json.loads((head / "config.json").read_text())["feature_info"]["pool_prior"] == 1.0
    with open_cache(bbc_cache) as cache:
        X, y = cache.features("mean"), cache.label_strings()
    mapped = PoolPrior().fit(X).transform(X)  # every cached row, labels unread
    accuracy = load_head(head).score(mapped, y)
    assert evaluate_head(str(head), str(bbc_cache)).accuracy == pytest.approx(accuracy)
    assert evaluate_head(str(head), str(bbc_cache)).accuracy != pytest.approx(load_head(head).score(X, y))
    rows = predict_texts(str(head), input=str(bbc_slice))  # the encoder again, then the saved map
    assert [r["label"] for r in rows] == list(load_head(head).predict(mapped))
    (head / "pool_prior.safetensors").unlink()
    assert main(["evaluate", "--head", str(head), "--cache", str(bbc_cache)]) == 2
    assert "pool_prior.safetensors: no such file, but the head's config.json says" in capsys.readouterr().err
    assert main(["train", "--train", str(bbc_cache), "--pool-prior", "-1", "-o", str(tmp_path / "h2")]) == 2
    assert not (tmp_path / "h2").exists()
    capsys.readouterr()
    budgets = [(k, seed) for k in (2, 3, 4, 5, 6) for seed in (0, 1, 2)]
    takes = prior_helps(X, mapped, y, [budget_rows(y, k, seed, "") for k, seed in budgets], [s for _, s in budgets])
    assert any(takes) and not all(takes)
    for (k, seed), took in [(budgets[takes.index(True)], True), (budgets[takes.index(False)], False)]:
        for name in ("last-layer", "layer-attention"):  # logistic regression's choice; never the attention head's
            expected = took and name == "last-layer"
            assert main(["train", "--train", str(bbc_cache), "--head", name, "--budget", str(k), "--seed", str(seed),
                         "--pool-prior", "auto", "-o", str(tmp_path / name), "--quiet"]) == 0
            said = (f"{'taken' if expected else 'not taken'}, by cross-validation" if name == "last-layer"
                    else "not taken; auto gives it to last-layer only")
            assert f"(pool prior: {said}" in capsys.readouterr().out
            info = load_head(tmp_path / name).feature_info_
            assert info["pool_prior_asked"] == "auto"
            assert (info["pool_prior"] == 1.0) == (tmp_path / name / "pool_prior.safetensors").exists() == expected


def test_out_of_domain_evaluation_needs_a_label_map(tmp_path, bbc_cache, bbc_slice, tiny_bert):
    head = tmp_path / "head"
    assert main(["train", "--train", str(bbc_cache), "--head", "last-layer", "--output", str(head)]) == 0
    renamed = tmp_path / "renamed"
    for d in bbc_slice.iterdir():
        (renamed / d.name.upper()).mkdir(parents=True)
        for f in d.iterdir():
            (renamed / d.name.upper() / f.name).write_bytes(f.read_bytes())
    other = tmp_path / "other.h5"
    extract_corpus(str(renamed), other, model=str(tiny_bert), max_length=64, device="cpu", progress=False)
    assert main(["evaluate", "--head", str(head), "--cache", str(other)]) == 2
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({d.name.upper(): d.name for d in bbc_slice.iterdir()}))
    assert main(["evaluate", "--head", str(head), "--cache", str(other), "--label-map", str(mapping)]) == 0


def test_sweep_refuses_an_unlabeled_test_cache(tmp_path, bbc_cache, bbc_slice, tiny_bert):
    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="") as f:
        csv.writer(f).writerows([["text"]] + [[p.read_text(errors="replace")] for p in sorted(bbc_slice.glob("*/*.txt"))])
    unlabeled = tmp_path / "unlabeled.h5"
    extract_corpus(str(texts), unlabeled, model=str(tiny_bert), max_length=64, label_column=None,
                   device="cpu", progress=False)
    with pytest.raises(InputError, match="30 documents have no label"):
        run_sweep(small_config(bbc_cache, tmp_path / "s", test=str(unlabeled)), progress=False)


def test_precision_bf16_reaches_the_vectorised_heads_and_the_recorded_config(tmp_path, bbc_cache, capsys):
    out = tmp_path / "s"
    assert main(["sweep", "--train", str(bbc_cache), "--output", str(out), "--heads", "last-layer,layer-attention",
                 "--budgets", "1", "--seeds", "1", "--precision", "bf16", "--quiet"]) == 0
    again = SweepConfig.from_toml(out / "config.toml")
    assert again.params == {"layer-attention": {"precision": "bf16"}}  # logistic regression has none
    assert main(["sweep", "--config", str(out / "config.toml"), "--precision", "bf16"]) == 2
    assert "does not apply to --config" in capsys.readouterr().err
    assert main(["train", "--train", str(bbc_cache), "--head", "scalar-mix", "--budget", "2", "--precision", "bf16",
                 "-o", str(tmp_path / "head")]) == 0
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["params"]["precision"] == "bf16"


def test_a_pool_prior_maps_train_and_test_by_the_training_rows_and_is_another_sweep(tmp_path, bbc_cache, capsys):
    plain = small_config(bbc_cache, tmp_path / "s", heads=["last-layer"])
    prior = small_config(bbc_cache, tmp_path / "s", heads=["last-layer"], pool_prior=1.0)
    raw, mapped = load_data(plain), load_data(prior)
    fitted = PoolPrior().fit(raw.X)  # the training split only: the test rows never shape the prior
    np.testing.assert_allclose(mapped.X, fitted.transform(raw.X))
    np.testing.assert_allclose(mapped.Xt, fitted.transform(raw.Xt))
    run_sweep(plain, progress=False)
    with pytest.raises(InputError, match="holds results of another sweep"):
        run_sweep(prior, progress=False)
    prior.output = str(tmp_path / "p")
    out = run_sweep(prior, progress=False)
    assert SweepConfig.from_toml(out / "config.toml").pool_prior == 1.0
    assert "pool prior: power 1" in (out / "summary.md").read_text()
    assert {c["head"] for c in collect([str(tmp_path / "s"), str(out)])} == {"last-layer", "last-layer, pool prior 1"}
    assert (timeless(read_cells(out / "cells.jsonl"))
            != timeless(read_cells(tmp_path / "s" / "cells.jsonl")))  # the heads saw other features
    with pytest.raises(InputError, match="pool prior: expected 'auto' or a power >= 0"):
        small_config(bbc_cache, tmp_path / "x", pool_prior=-0.5)
    assert main(["sweep", "--train", str(bbc_cache), "--output", str(tmp_path / "c"), "--heads", "last-layer",
                 "--budgets", "1", "--seeds", "1", "--pool-prior", "0.5", "--quiet"]) == 0
    assert SweepConfig.from_toml(tmp_path / "c" / "config.toml").pool_prior == 0.5
    assert main(["sweep", "--config", str(tmp_path / "c" / "config.toml"), "--pool-prior", "1"]) == 2
    assert 'set pool_prior ("auto" or a power) in its [sweep] table' in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_sweep_on_a_gpu_fits_every_budget_of_a_head_in_one_call(tmp_path, bbc_cache):
    heads = ("scalar-mix", "layer-attention")
    cells = {device: read_cells(run_sweep(small_config(bbc_cache, tmp_path / device, heads=heads, device=device),
                                           progress=False) / "cells.jsonl") for device in ("cpu", "cuda")}
    for head in heads:  # fit_seconds is a call's time shared by its fits: one call per budget, or one per head
        assert len({c["fit_seconds"] for c in cells["cpu"] if c["head"] == head}) == 2
        assert len({c["fit_seconds"] for c in cells["cuda"] if c["head"] == head}) == 1
    # the same heads up to float rounding (checked on probabilities in tests/classify); here 9 test documents
    # and near-ties of a random tiny BERT's features, so only the mean accuracy is compared
    mean = {d: np.mean([c["accuracy"] for c in cells[d]]) for d in cells}
    assert len(cells["cuda"]) == 8 and abs(mean["cuda"] - mean["cpu"]) < 0.1
