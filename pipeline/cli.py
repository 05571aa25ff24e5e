"""The `finetext` command line: a thin layer over the library functions."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any, Callable, Sequence

from finetext.classify.errors import HeadFormatError
from finetext.extract.cache import POOLINGS
from finetext.extract.errors import CacheFormatError, CacheMismatchError, InputError, OutputBusyError
from finetext.pipeline.settings import (CACHED_HEADS, CHECK_MIN_PER_CLASS, DEFAULT_STRATEGIES, FEW_SHOT_PER_CLASS,
                                       FINETUNE_HEADS, OBJECTIVES, PAIR_BATCH, PRECISIONS, STRATEGY_NAMES,
                                       FinetuneSettings)

HEAD_DEVICE_HELP = ("where scalar-mix and layer-attention train: cpu (default), cuda, cuda:N, mps or auto; "
                    "a GPU gives the same heads up to rounding")

HEAD_PRECISION_HELP = ("bf16: scalar-mix and layer-attention multiply their features in bfloat16: faster on large "
                       "fits where the CPU or GPU has native bf16, the same accuracies (docs/benchmarks.md)")
POOL_PRIOR_HELP = ("map the features by the covariance of every training row, labels unread, before the heads "
                   "see them (classify.PoolPrior; 1: the covariance itself, 0: centring only): lifts logistic "
                   "regression at small budgets on tasks of few broad classes, costs tasks of many fine ones; "
                   "'auto': power 1 for logistic regression wherever it cross-validates better on the labelled "
                   "rows, never for the attention heads (which lost with it); off by default")
Handler = Callable[[argparse.Namespace], int]


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _pool_prior(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a power >= 0, got {value!r}") from None


def add_corpus_options(p: argparse.ArgumentParser, labels_needed: bool = False) -> None:
    """Input options shared by every command that reads text; `labels_needed` (finetune, baseline): no --no-labels."""
    p.add_argument("input", help="a .csv/.tsv/.jsonl/.parquet file, a folder saved by `datasets` (save_to_disk), a "
                                 "folder of per-label .txt subfolders, 'bbc', or a registered dataset name (trec, "
                                 "sst2, banking77, ...)")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--text-pair-column", default=None, help="second text column, for sentence pairs")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    if labels_needed:
        p.set_defaults(no_labels=False)
    else:
        p.add_argument("--no-labels", action="store_true", help="the corpus has no labels")
    p.add_argument("--id-column", default=None, help="column holding unique ids (default: row numbers)")
    p.add_argument("--fallback-encoding", default=None,
                   help="decode text that is not UTF-8 with this codec (e.g. cp1252) instead of failing")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop rows with empty, missing or undecodable text or a missing label, and count them")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face name or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--revision", default=None, help="model branch, tag or commit on the hub")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per document (default and cap: the model's position limit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute dtype")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per forward pass (default: 4096 on CPU, 16384 on a GPU)")


def _extract(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from finetext.extract import extract_corpus
    from finetext.pipeline.registry import registry

    if args.split and not (args.input in registry() and not Path(args.input).exists()):
        raise InputError(f"--split applies to registered datasets ({', '.join(registry())}), not {args.input!r}.")
    spec = asdict(_corpus_spec(args, args.input, args.split))
    del spec["require_labels"]  # extract reads unlabelled corpora too
    result = extract_corpus(
        spec.pop("source"), args.output, **spec,
        model=args.model, revision=args.revision, poolings=args.pooling, max_length=args.max_length,
        device=args.device, compute_dtype=args.dtype, storage_dtype=args.storage_dtype,
        tokens=args.tokens, token_layers=args.token_layers, batch_tokens=args.batch_tokens, layers=args.layers,
        block_docs=args.block_docs, shard=args.shard, force=args.force, progress=not args.quiet,
    )
    rate = result.n_docs / result.seconds if result.seconds else float("inf")
    print(f"{result.path}: {result.status}, {result.n_docs} documents in {result.seconds:.1f} s ({rate:.0f} docs/s)")
    if args.info:
        from finetext.extract import describe_cache

        print(describe_cache(result.path))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from finetext.extract import merge_shards

    result = merge_shards(args.cache, progress=not args.quiet)
    print(f"{result.path}: {result.status}, {result.n_docs} documents")
    return 0


def _info(args: argparse.Namespace) -> int:
    from finetext.extract import describe_cache

    print(describe_cache(args.cache))
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from finetext.pipeline.registry import data_dir, describe, registry, resolve

    for name in args.fetch:
        if name not in registry():
            raise InputError(f"{name}: not a registered dataset; `finetext datasets` lists them.")
        for split in registry()[name]["splits"]:
            print(f"{name} {split}: {resolve(name, split)[0]}")
    print("\n".join(describe()))
    print(f"downloads go to {data_dir()} (set FINETEXT_DATA to change it; FINETEXT_OFFLINE=1 turns them off)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from finetext.extract import verify_cache

    for line in verify_cache(args.cache):
        print(f"{args.cache}: {line}")
    return 0


def _study_config(args: argparse.Namespace, cls, command: str, build: Callable[[], Any]):
    """A sweep's or simulation's config: --config FILE.toml (--output moves it), or `build()` from the options."""
    if args.config:
        config = cls.from_toml(args.config)
        if args.output:
            config.output = args.output
        return config
    if not args.train or not args.output:
        raise InputError(f"{command}: give --train CACHE and --output DIR (or --config FILE.toml).")
    return build()


def _print_written(out) -> None:
    written = (p for p in sorted(out.glob("*")) if p.suffix in (".csv", ".json", ".md", ".png", ".toml"))
    print("\n".join(f"wrote {p}" for p in written))


def _simulate(args: argparse.Namespace) -> int:
    from finetext.pipeline.simulate import SimulateConfig, run_simulation

    config = _study_config(args, SimulateConfig, "simulate", lambda: SimulateConfig(
        train=args.train, test=args.test, output=args.output, test_fraction=args.test_fraction,
        strategies=args.strategies, head=args.head, start=args.start, step=args.step, until=args.until,
        seeds=args.seeds, pooling=args.pooling, device=args.device))
    out = run_simulation(config, progress=not args.quiet)
    print((out / "summary.md").read_text().split("\n\n", 1)[1].rstrip())
    _print_written(out)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from finetext.pipeline.report import labels_needed, summarize, summary_table
    from finetext.pipeline.sweep import HEADS, SweepConfig, head_params, read_cells, run_sweep

    if args.config:
        given = [f"--{k}" for k in head_params(list(HEADS), args.precision).get("layer-attention", {})]
        if args.pool_prior is not None:
            raise InputError("sweep: --pool-prior does not apply to --config, which reruns the sweep as recorded; "
                             "set pool_prior (\"auto\" or a power) in its [sweep] table, or drop --config.")
        if given:
            raise InputError(f"sweep: {' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to "
                             "--config, which reruns the sweep as recorded; set them in its "
                             "[sweep.params.\"layer-attention\"] table, or drop --config.")
    config = _study_config(args, SweepConfig, "sweep", lambda: SweepConfig(
        train=args.train, test=args.test, output=args.output, heads=args.heads, budgets=args.budgets,
        budget_mode=args.budget_mode, seeds=args.seeds, pooling=args.pooling, layers=args.layers,
        test_fraction=args.test_fraction, device=args.device, pool_prior=args.pool_prior,
        params=head_params(args.heads, args.precision)))
    out = run_sweep(config, progress=not args.quiet, verbose=args.verbose)
    summary = summarize(read_cells(out / "cells.jsonl"))
    per_class = config.budget_mode == "per-class"
    print(summary_table(summary, per_class=per_class) + "\n\n" + labels_needed(summary, per_class=per_class))
    _print_written(out)
    return 0


def _train(args: argparse.Namespace) -> int:
    from finetext.pipeline.sweep import AUTO_PRIOR_HEADS, HEADS, head_params
    from finetext.pipeline.workflows import train_head

    path = train_head(args.train, args.head, args.output, budget=args.budget, seed=args.seed,
                      pooling=args.pooling, layers=args.layers, device=args.device,
                      params=head_params([args.head], args.precision).get(args.head),
                      progress=not args.quiet, pool_prior=args.pool_prior)
    said = ""
    if args.pool_prior == "auto" and not issubclass(HEADS[args.head], AUTO_PRIOR_HEADS):
        said = " (pool prior: not taken; auto gives it to last-layer only)"
    elif args.pool_prior == "auto":
        took = json.loads((path / "config.json").read_text())["feature_info"]["pool_prior"] is not None
        said = f" (pool prior: {'taken' if took else 'not taken'}, by cross-validation on the training rows)"
    print(f"saved {args.head} to {path}{said}")
    return 0


def _corpus_spec(args: argparse.Namespace, source: str, split: str | None = None, require_labels: bool = False):
    """A CorpusSpec from the shared corpus options; a registered dataset name reads its mirror. require_labels:
    the command needs labels (evaluate, finetune)."""
    from pathlib import Path

    from finetext.extract import CorpusSpec
    from finetext.pipeline.registry import registry, resolve

    columns = {"text_column": args.text_column, "label_column": args.label_column}
    if source in registry() and not Path(source).exists():
        source, options = resolve(source, split)
        columns |= options
    return CorpusSpec(source, text_column=columns["text_column"], text_pair_column=args.text_pair_column,
                      label_column=None if args.no_labels else columns["label_column"], id_column=args.id_column,
                      fallback_encoding=args.fallback_encoding, skip_bad_rows=args.skip_bad_rows,
                      require_labels=require_labels)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from finetext.pipeline.workflows import evaluate_head

    label_map = json.loads(open(args.label_map).read()) if args.label_map else None
    corpus = _corpus_spec(args, args.input, args.split or "test", require_labels=True) if args.input else None
    result = evaluate_head(args.head, args.cache, corpus=corpus, label_map=label_map,
                           output=args.output or args.head, device=args.device, normalize=args.normalize)
    print(f"accuracy {100 * result.accuracy:.2f}%  macro-F1 {100 * result.macro_f1:.2f}%  ({result.n_docs} documents)")
    width = max(len(label) for label in result.labels)
    print(" " * (width + 2) + " ".join(f"{label[:6]:>6}" for label in result.labels) + "   (rows: true, columns: predicted)")
    for label, row in zip(result.labels, result.confusion):
        print(f"{label:>{width}}  " + " ".join(f"{v:>6}" for v in row))
    print(f"wrote {args.output or args.head}/confusion_matrix.png and metrics.json")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from finetext.pipeline.workflows import predict_texts

    rows = predict_texts(args.head, input=args.input, texts=args.text, output=args.output,
                         text_column=args.text_column, id_column=args.id_column,
                         fallback_encoding=args.fallback_encoding, skip_bad_rows=args.skip_bad_rows,
                         device=args.device)
    if args.output:
        print(f"wrote {len(rows)} predictions to {args.output}")
    else:
        for r in rows[:50]:
            p = max(v for k, v in r.items() if k.startswith("p_"))
            print(f"{r['label']}\t{p:.3f}\t{r['text'][:80]}")
    return 0


def _finetune_settings(args: argparse.Namespace):
    return FinetuneSettings(
        objective=args.objective, head=args.head, pooling=args.pooling,
        max_length=args.max_length or FinetuneSettings.max_length, epochs=args.epochs,
        min_steps=args.min_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        layer_decay=args.layer_decay, head_lr=args.head_lr, warmup=args.warmup, validation=args.validation,
        patience=args.patience, seed=args.seed, device=args.device, precision=args.precision)


def _print_tasks(metrics: dict, output: str) -> None:
    for t in metrics["tasks"]:
        acc = "" if t["test_accuracy"] is None else f"  test accuracy {100 * t['test_accuracy']:.2f}%"
        print(f"{t['name']}: {t['n_train']} training documents{acc}")
    print(f"trained ({metrics['objective']} objective) {metrics['epochs_run']} epochs in "
          f"{metrics['train_seconds']:.0f} s on {metrics['device']}; saved to {output} (metrics.json)")


def _task(args: argparse.Namespace):
    """The Task of `finetune` and `baseline`: INPUT's training split, --test (or a registered dataset's test
    split), --budget, named by --name or after the dataset or file."""
    from pathlib import Path

    from finetext.pipeline.finetune import Task, read_corpus
    from finetext.pipeline.registry import registry

    registered = args.input in registry() and not Path(args.input).exists()
    train = read_corpus(_corpus_spec(args, args.input, args.split or "train", require_labels=True))
    test_source = args.test or (args.input if registered and "test" in registry()[args.input].get("splits", {}) else None)
    test = read_corpus(_corpus_spec(args, test_source, "test", require_labels=True)) if test_source else None
    name = args.name or (args.input if registered else Path(args.input).stem)
    return Task(name, train, test, args.budget)


def _finetune(args: argparse.Namespace) -> int:
    from finetext.pipeline.finetune import finetune

    metrics = finetune([_task(args)], args.output, model=args.model, revision=args.revision,
                       settings=_finetune_settings(args), progress=not args.quiet)
    _print_tasks(metrics, args.output)
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from finetext.pipeline.baseline import run_setfit

    metrics = run_setfit(_task(args), args.output, seed=args.seed, model=args.model, progress=not args.quiet)
    print(f"{metrics['method']} on {metrics['n_train']} training documents: test accuracy "
          f"{100 * metrics['test_accuracy']:.2f}% in {metrics['train_seconds']:.0f} s; wrote {args.output}/metrics.json "
          "and cells.jsonl")
    return 0


def _multitask(args: argparse.Namespace) -> int:
    from finetext.pipeline.multitask import parse_task, run_multitask

    tasks = [parse_task(t) for t in args.tasks]
    metrics = run_multitask(tasks, args.output, cached=args.cached, compare=not args.no_compare,
                            budget=args.budget, model=args.model, settings=_finetune_settings(args),
                            progress=not args.quiet)
    for row in metrics["comparison"]:
        print(f"{row['task']:>12}  {row['method']:<28} accuracy {100 * row['accuracy']:.2f}%  "
              f"training {row['train_seconds']:.1f} s")
    print(f"wrote {args.output}/metrics.json")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from finetext.pipeline.compare import compare_runs

    table, paths = compare_runs(args.runs, args.output, task=args.task)
    print(table)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def add_finetune_options(p: argparse.ArgumentParser) -> None:
    d = FinetuneSettings()
    p.add_argument("--model", default=None,
                   help="Hugging Face name or local folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--revision", default=None, help="model branch, tag or commit on the hub")
    p.add_argument("--max-length", type=int, default=None, help=f"tokens per document (default {d.max_length})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--objective", default=d.objective, choices=list(OBJECTIVES),
                   help="contrastive: tune the encoder on pairs of labelled rows (SetFit's loss), then fit the head; "
                        "classification: train encoder and head together on cross-entropy. auto (default): "
                        f"contrastive up to {FEW_SHOT_PER_CLASS} labels per class; with more than {PAIR_BATCH} rows "
                        f"and from {CHECK_MIN_PER_CLASS} per class it first tunes on each half of them and keeps the "
                        "pretrained encoder where that predicts the other half worse. The options below, from "
                        "--epochs on, shape the classification objective")
    p.add_argument("--head", default=d.head, choices=list(FINETUNE_HEADS), help="the head on top of the encoder")
    p.add_argument("--pooling", default=d.pooling, choices=list(POOLINGS))
    p.add_argument("--budget", type=int, default=None, help="labels per class drawn from the training corpus (default: all)")
    p.add_argument("--seed", type=int, default=d.seed, help="budget draw, initialisation and batch order")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the training data (default {d.epochs})")
    p.add_argument("--min-steps", type=int, default=d.min_steps,
                   help=f"at least this many optimiser steps: small budgets get more epochs (default {d.min_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="batches per optimiser step")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of the top encoder layer (default {d.lr})")
    p.add_argument("--layer-decay", type=float, default=d.layer_decay,
                   help=f"each layer below learns this times slower (default {d.layer_decay})")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help=f"learning rate of the head (default {d.head_lr})")
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of steps with a rising learning rate")
    p.add_argument("--validation", type=float, default=d.validation,
                   help=f"fraction held out for early stopping when every class has {d.min_val_per_class}+ labels "
                        "(0: none)")
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without a better validation accuracy")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="auto: bf16 mixed precision on a GPU that has it, fp32 otherwise")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _demo(args: argparse.Namespace) -> int:
    from finetext.pipeline.report import labels_needed, summarize, summary_table
    from finetext.pipeline.sweep import read_cells
    from finetext.pipeline.workflows import run_demo

    out = run_demo(args.output, seeds=args.seeds, progress=not args.quiet)
    print("\nBBC News, packaged all-MiniLM-L6-v2, test accuracy (%) mean ± 95% CI:\n")
    summary = summarize(read_cells(out / "cells.jsonl"))
    print(summary_table(summary) + "\n\n" + labels_needed(summary))
    print("\nplots:\n" + "\n".join(f"  {p}" for p in sorted(out.glob("*.png"))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetext",
        description="Cache every layer of a pretrained transformer once, then train attention-over-layers "
                    "heads on the cache in seconds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("extract", help="encode a corpus once into an HDF5 cache of every layer",
                       description="Encode a corpus once and cache every hidden state, pooled per document.")
    add_corpus_options(p)
    add_model_options(p)
    p.add_argument("--output", "-o", required=True, help="the cache file to write (CACHE.h5)")
    p.add_argument("--pooling", type=_csv_list, default=["mean"],
                   help=f"comma-separated subset of {','.join(POOLINGS)} (default: mean)")
    p.add_argument("--storage-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--tokens", action="store_true", help="also keep token-level states (large: see docs)")
    p.add_argument("--token-layers", type=_int_list, default=None,
                   help="hidden states to keep at token level, e.g. 0,3,6 (default: all)")
    p.add_argument("--layers", default=None, metavar="0,6,12|every:K|last:K",
                   help="hidden states to keep (0 = the embeddings; -1 the last): indices, every K-th from the "
                        "first with the last, or the last K (default: all)")
    p.add_argument("--block-docs", type=int, default=None,
                   help="documents per resumable block (default 4096, 128 with --tokens)")
    p.add_argument("--split", default=None, help="split of a registered dataset (pipeline/registry.json), e.g. train")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="encode only shard I (from 0) of N, e.g. a job array's task; the last shard to finish "
                        "publishes the cache (or `finetext merge`). Under torchrun every rank takes its own shard")
    p.add_argument("--force", action="store_true", help="rebuild a cache made from another corpus or settings")
    p.add_argument("--info", action="store_true", help="print what the cache holds when done")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_extract)

    p = sub.add_parser("sweep", help="label budgets x seeds x heads on cached features: tables and plots",
                       description="Train the whole grid on cached features and report learning curves.")
    p.add_argument("--train", help="training cache")
    p.add_argument("--test", help="test cache (default: a stratified split of the training cache)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="split size when there is no --test")
    p.add_argument("--heads", type=_csv_list, default=list(CACHED_HEADS),
                   help=f"comma-separated: {', '.join(CACHED_HEADS)}")
    p.add_argument("--budgets", type=_csv_list, default=["4", "8", "16", "32", "64"],
                   help="comma-separated labels per class (or in total, see --budget-mode); 'all' too")
    p.add_argument("--budget-mode", default="per-class", choices=["per-class", "total"])
    p.add_argument("--seeds", type=int, default=10, help="seeds per budget (default 10)")
    p.add_argument("--pooling", default="mean", help="which cached pooling to use")
    p.add_argument("--layers", type=_int_list, default=None, help="hidden states to use (default: all)")
    p.add_argument("--pool-prior", type=_pool_prior, default=None, metavar="auto|POWER", help=POOL_PRIOR_HELP)
    p.add_argument("--output", "-o", help="results folder")
    p.add_argument("--config", help="rerun a sweep from its config.toml")
    p.add_argument("--device", default="cpu", help=HEAD_DEVICE_HELP)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help=HEAD_PRECISION_HELP)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="also a bar over each stack's training epochs")
    p.set_defaults(handler=_sweep)

    p = sub.add_parser("train", help="fit one head on a cache and save it")
    p.add_argument("--train", required=True, help="training cache")
    p.add_argument("--head", default="layer-attention", choices=list(CACHED_HEADS))
    p.add_argument("--output", "-o", required=True, help="folder for the saved head")
    p.add_argument("--budget", type=int, default=None, help="labels per class (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--layers", type=_int_list, default=None)
    p.add_argument("--device", default="cpu", help=HEAD_DEVICE_HELP)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help=HEAD_PRECISION_HELP)
    p.add_argument("--pool-prior", type=_pool_prior, default=None, metavar="auto|POWER",
                   help=POOL_PRIOR_HELP + " (saved with the head, applied by evaluate and predict)")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the epochs")
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="score a saved head on a cache or corpus: metrics and a confusion matrix")
    p.add_argument("--head", required=True, help="saved head folder (from train, finetune or multitask)")
    p.add_argument("--cache", help="labelled cache to score on (extracted with the head's encoder)")
    p.add_argument("--input", help="or a labelled corpus (file, folder or registered name), run through the "
                                   "head's own encoder")
    for flag, default in (("--text-column", "text"), ("--text-pair-column", None), ("--label-column", "label"),
                          ("--id-column", None), ("--fallback-encoding", None)):
        p.add_argument(flag, default=default, help="as in extract (with --input)")
    p.add_argument("--skip-bad-rows", action="store_true", help="as in extract (with --input)")
    p.add_argument("--split", default=None, help="split of a registered dataset given as --input (default test)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(no_labels=False)
    p.add_argument("--label-map", help="JSON file mapping the cache's label names to the head's")
    p.add_argument("--output", "-o", help="folder for metrics.json and confusion_matrix.png (default: the head's)")
    p.add_argument("--normalize", action="store_true",
                   help="confusion_matrix.png shows each row as percentages of its true class (default: counts)")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("predict", help="classify new texts with a saved head (runs its encoder)")
    p.add_argument("--head", required=True, help="saved head folder")
    p.add_argument("--input", help="a .csv/.tsv/.jsonl file or folder of texts")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--output", "-o", help="CSV to write (id, text, label, one probability column per class)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default=None)
    p.add_argument("--fallback-encoding", default=None)
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(handler=_predict)

    p = sub.add_parser("finetune", help="fine-tune the encoder end to end with a head on top (the paper's method)",
                       description="Train the encoder and a finetext head together on a corpus or a label budget "
                                   "of it; the result folder works with predict and evaluate.")
    add_corpus_options(p, labels_needed=True)
    add_finetune_options(p)
    p.add_argument("--output", "-o", required=True, help="result folder: encoder/, the head, metrics.json")
    p.add_argument("--test", default=None, help="labelled test corpus (default: the test split of a registered "
                                                "dataset); adds test_accuracy to metrics.json")
    p.add_argument("--split", default=None, help="split of a registered dataset used for training (default train)")
    p.add_argument("--name", default=None, help="task name in the results (default: the dataset name or file stem)")
    p.set_defaults(handler=_finetune)

    p = sub.add_parser("baseline", help="a published few-shot method on the rows finetune draws (SetFit)",
                       description="Train a published few-shot method with its own defaults on exactly the rows "
                                   "`finetext finetune --budget K --seed S` draws, and write metrics.json and "
                                   "cells.jsonl for `finetext compare`. A checkpoint is saved every ten minutes of "
                                   "training: the same command after an interruption resumes from it. Needs "
                                   "`pip install 'finetext[baselines]'`.")
    p.add_argument("method", choices=["setfit"], help="setfit: the setfit package's Trainer with its defaults")
    add_corpus_options(p, labels_needed=True)
    p.add_argument("--test", default=None, help="labelled test corpus (default: the test split of a registered "
                                                "dataset)")
    p.add_argument("--budget", type=int, default=None, help="labels per class, drawn as finetune draws them "
                                                           "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="the budget draw and SetFit's seed")
    p.add_argument("--model", default=None, help="a sentence-transformers name or folder (default: the packaged "
                                                 "all-MiniLM-L6-v2)")
    p.add_argument("--split", default=None, help="split of a registered dataset used for training (default train)")
    p.add_argument("--name", default=None, help="task name in the results (default: the dataset name or file stem)")
    p.add_argument("--output", "-o", required=True, help="result folder: metrics.json and cells.jsonl")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or training logs")
    p.set_defaults(handler=_baseline)

    p = sub.add_parser("multitask", help="one model for several tasks (cached or end to end) vs one per task",
                       description="Train one shared layer selector (--cached) or one shared encoder and selector "
                                   "for several tasks, each with its own output layer, and compare with one model "
                                   "per task: accuracy and training time.")
    p.add_argument("tasks", nargs="+", metavar="TASK",
                   help="a registered dataset (trec, sst2, ...: its train and test splits), or NAME=TRAIN,TEST "
                        "(two .h5 caches with --cached, or two labelled files with text,label columns)")
    p.add_argument("--cached", action="store_true", help="train on cached features (extracting registered "
                                                         "datasets into OUTPUT/caches first)")
    p.add_argument("--no-compare", action="store_true", help="skip the single-task runs")
    add_finetune_options(p)
    p.add_argument("--output", "-o", required=True, help="result folder")
    p.set_defaults(handler=_multitask)

    p = sub.add_parser("simulate", help="which texts to label: active-learning strategies simulated on a cache",
                       description="From a seeded, stratified start set, each round every strategy picks the next "
                                   "--step rows among the training rows it has not labelled, the head retrains, and "
                                   "its test accuracy is recorded against the labels, until --until labels; seeds "
                                   "are independent campaigns. Resumable; `finetext compare` reads the folder.")
    p.add_argument("--train", help="training cache: the pool the strategies pick from (its labels told as picked)")
    p.add_argument("--test", help="test cache (default: a stratified split of the training cache)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="split size when there is no --test")
    p.add_argument("--strategies", type=_csv_list, default=list(DEFAULT_STRATEGIES),
                   help=f"comma-separated: {', '.join(STRATEGY_NAMES)} (default: {','.join(DEFAULT_STRATEGIES)})")
    p.add_argument("--head", default="last-layer", choices=list(CACHED_HEADS), help="the head each round retrains")
    p.add_argument("--start", type=int, default=2, help="labels per class in the seeded, stratified start set")
    p.add_argument("--step", type=int, default=12, help="labels added per round, in total")
    p.add_argument("--until", type=int, default=384, help="labels in total at the end")
    p.add_argument("--seeds", type=int, default=10, help="independent campaigns per strategy (default 10)")
    p.add_argument("--pooling", default="mean", help="which cached pooling to use")
    p.add_argument("--output", "-o", help="results folder")
    p.add_argument("--config", help="rerun a simulation from its config.toml")
    p.add_argument("--device", default="cpu", help=HEAD_DEVICE_HELP)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_simulate)

    p = sub.add_parser("compare", help="one report from sweeps, simulations, fine-tuning, baselines and multi-task runs",
                       description="Merge the results of sweep, simulate, finetune, baseline and multitask folders "
                                   "into one table "
                                   "(accuracy with CIs and training seconds per budget) and plots.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="folders written by sweep, simulate, finetune, baseline or multitask")
    p.add_argument("--task", default=None, help="keep rows of this task only (runs that name no task count as it)")
    p.add_argument("--output", "-o", required=True, help="report folder")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("demo", help="BBC News end to end with the packaged MiniLM (no network)")
    p.add_argument("--output", "-o", default="runs/demo", help="where the cache and the report go")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("merge", help="publish the cache that `extract --shard I/N` runs wrote, once all are done")
    p.add_argument("cache", help="the --output of the shards' runs")
    p.add_argument("--quiet", "-q", action="store_true", help="no messages but the result")
    p.set_defaults(handler=_merge)

    p = sub.add_parser("info", help="say what a cache holds")
    p.add_argument("cache")
    p.set_defaults(handler=_info)

    p = sub.add_parser("datasets", help="the registered benchmarks: splits, rows, where each is or comes from")
    p.add_argument("--fetch", nargs="+", default=[], metavar="NAME",
                   help="download these now (every split), checking sha256")
    p.set_defaults(handler=_datasets)

    p = sub.add_parser("verify", help="read every chunk of a cache and check its metadata")
    p.add_argument("cache")
    p.set_defaults(handler=_verify)
    return parser


OS_FIXES = {  # errno -> what the user can do about it
    errno.ENOSPC: "free space on that disk, or write elsewhere; a rerun resumes",
    errno.EDQUOT: "free space within your quota, or write elsewhere; a rerun resumes",
    errno.EROFS: "the filesystem is read-only: write the output elsewhere",
    errno.EACCES: "you may not write or read there: fix the permissions, or choose another path",
    errno.EPERM: "you may not write or read there: fix the permissions, or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: name a file inside it",
    errno.ENOENT: "check the path",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path, what happened, the fix."""
    where = f"{exc.filename}: " if exc.filename else ""
    fix = OS_FIXES.get(exc.errno or 0)
    return f"{where}{exc.strerror or exc}" + (f"; {fix}." if fix else ".")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (InputError, CacheMismatchError, CacheFormatError, HeadFormatError, OutputBusyError) as exc:
        print(f"finetext: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`finetext info x.h5 | head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    except OSError as exc:  # a missing file, a full disk, a read-only folder: one line, not a traceback
        message = str(exc) if exc.filename is None and exc.strerror is None else os_error_line(exc)
        print(f"finetext: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetext: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
