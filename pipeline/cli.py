"""The `finetext` command line: a thin layer over the library functions."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from extract import CacheFormatError, CacheMismatchError, InputError, POOLINGS
from pipeline.sweep import HEADS

Handler = Callable[[argparse.Namespace], int]


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    """Input options shared by every command that reads text."""
    p.add_argument("input", help="a .csv/.tsv/.jsonl file, a folder of per-label .txt subfolders, 'bbc', "
                                 "or a registered dataset name (trec, sst2, banking77, ...)")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--text-pair-column", default=None, help="second text column, for sentence pairs")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
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
    from pathlib import Path

    from extract import extract_corpus
    from pipeline.registry import registry, resolve

    source, columns = args.input, {"text_column": args.text_column, "label_column": args.label_column}
    if args.input in registry() and not Path(args.input).exists():
        source, columns = resolve(args.input, args.split)
    elif args.split:
        raise InputError(f"--split applies to registered datasets ({', '.join(registry())}), not {args.input!r}.")
    result = extract_corpus(
        source, args.output,
        text_column=columns.get("text_column", args.text_column), text_pair_column=args.text_pair_column,
        label_column=None if args.no_labels else columns.get("label_column", args.label_column),
        id_column=args.id_column,
        fallback_encoding=args.fallback_encoding, skip_bad_rows=args.skip_bad_rows,
        model=args.model, revision=args.revision, poolings=args.pooling, max_length=args.max_length,
        device=args.device, compute_dtype=args.dtype, storage_dtype=args.storage_dtype,
        tokens=args.tokens, token_layers=args.token_layers, batch_tokens=args.batch_tokens,
        block_docs=args.block_docs, force=args.force, progress=not args.quiet,
    )
    rate = result.n_docs / result.seconds if result.seconds else float("inf")
    print(f"{result.path}: {result.status}, {result.n_docs} documents in {result.seconds:.1f} s ({rate:.0f} docs/s)")
    if args.info:
        from extract import describe_cache

        print(describe_cache(result.path))
    return 0


def _info(args: argparse.Namespace) -> int:
    from extract import describe_cache

    print(describe_cache(args.cache))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from extract import verify_cache

    for line in verify_cache(args.cache):
        print(f"{args.cache}: {line}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pipeline.report import summarize, summary_table
    from pipeline.sweep import SweepConfig, _read_cells, run_sweep

    if args.config:
        config = SweepConfig.from_toml(args.config)
        if args.output:
            config.output = args.output
    else:
        if not args.train or not args.output:
            raise InputError("sweep: give --train CACHE and --output DIR (or --config FILE.toml).")
        config = SweepConfig(train=args.train, test=args.test, output=args.output, heads=args.heads,
                             budgets=args.budgets, budget_mode=args.budget_mode, seeds=args.seeds,
                             pooling=args.pooling, layers=args.layers, test_fraction=args.test_fraction)
    out = run_sweep(config, progress=not args.quiet)
    print(summary_table(summarize(_read_cells(out / "cells.jsonl"))))
    print("\n".join(f"wrote {p}" for p in sorted(out.glob("*")) if p.suffix in (".csv", ".json", ".md", ".png", ".toml")))
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipeline.workflows import train_head

    path = train_head(args.train, args.head, args.output, budget=args.budget, seed=args.seed,
                      pooling=args.pooling, layers=args.layers)
    print(f"saved {args.head} to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from pipeline.workflows import evaluate_head

    label_map = json.loads(open(args.label_map).read()) if args.label_map else None
    result = evaluate_head(args.head, args.cache, label_map=label_map, output=args.output or args.head)
    print(f"accuracy {100 * result.accuracy:.2f}%  macro-F1 {100 * result.macro_f1:.2f}%  ({result.n_docs} documents)")
    width = max(len(label) for label in result.labels)
    print(" " * (width + 2) + " ".join(f"{label[:6]:>6}" for label in result.labels) + "   (rows: true, columns: predicted)")
    for label, row in zip(result.labels, result.confusion):
        print(f"{label:>{width}}  " + " ".join(f"{v:>6}" for v in row))
    print(f"wrote {args.output or args.head}/confusion_matrix.png and metrics.json")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pipeline.workflows import predict_texts

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


def _demo(args: argparse.Namespace) -> int:
    from pipeline.report import summarize, summary_table
    from pipeline.sweep import _read_cells
    from pipeline.workflows import run_demo

    out = run_demo(args.output, seeds=args.seeds, progress=not args.quiet)
    print("\nBBC News, packaged all-MiniLM-L6-v2, test accuracy (%) mean ± 95% CI:\n")
    print(summary_table(summarize(_read_cells(out / "cells.jsonl"))))
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
    p.add_argument("--block-docs", type=int, default=None,
                   help="documents per resumable block (default 2048, 128 with --tokens)")
    p.add_argument("--split", default=None, help="split of a registered dataset (data/registry.json), e.g. train")
    p.add_argument("--force", action="store_true", help="rebuild a cache made from another corpus or settings")
    p.add_argument("--info", action="store_true", help="print what the cache holds when done")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_extract)

    p = sub.add_parser("sweep", help="label budgets x seeds x heads on cached features: tables and plots",
                       description="Train the whole grid on cached features and report learning curves.")
    p.add_argument("--train", help="training cache")
    p.add_argument("--test", help="test cache (default: a stratified split of the training cache)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="split size when there is no --test")
    p.add_argument("--heads", type=_csv_list, default=list(HEADS), help=f"comma-separated: {', '.join(HEADS)}")
    p.add_argument("--budgets", type=_csv_list, default=["4", "8", "16", "32", "64"],
                   help="comma-separated labels per class (or in total, see --budget-mode); 'all' too")
    p.add_argument("--budget-mode", default="per-class", choices=["per-class", "total"])
    p.add_argument("--seeds", type=int, default=10, help="seeds per budget (default 10)")
    p.add_argument("--pooling", default="mean", help="which cached pooling to use")
    p.add_argument("--layers", type=_int_list, default=None, help="hidden states to use (default: all)")
    p.add_argument("--output", "-o", help="results folder")
    p.add_argument("--config", help="rerun a sweep from its config.toml")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_sweep)

    p = sub.add_parser("train", help="fit one head on a cache and save it")
    p.add_argument("--train", required=True, help="training cache")
    p.add_argument("--head", default="layer-attention", choices=list(HEADS))
    p.add_argument("--output", "-o", required=True, help="folder for the saved head")
    p.add_argument("--budget", type=int, default=None, help="labels per class (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--layers", type=_int_list, default=None)
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="score a saved head on a cache: metrics and a confusion matrix")
    p.add_argument("--head", required=True, help="saved head folder")
    p.add_argument("--cache", required=True, help="labelled cache to score on")
    p.add_argument("--label-map", help="JSON file mapping the cache's label names to the head's")
    p.add_argument("--output", "-o", help="folder for metrics.json and confusion_matrix.png (default: the head's)")
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

    p = sub.add_parser("demo", help="BBC News end to end with the packaged MiniLM (no network)")
    p.add_argument("--output", "-o", default="runs/demo", help="where the cache and the report go")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("info", help="say what a cache holds")
    p.add_argument("cache")
    p.set_defaults(handler=_info)

    p = sub.add_parser("verify", help="read every chunk of a cache and check its metadata")
    p.add_argument("cache")
    p.set_defaults(handler=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (InputError, CacheMismatchError, CacheFormatError) as exc:
        print(f"finetext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetext: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
