"""The `finetext` command line: a thin layer over the library functions."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from extract import CacheFormatError, CacheMismatchError, InputError, POOLINGS

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
    p.add_argument("input", help="a .csv/.tsv/.jsonl file, a folder of per-label .txt subfolders, or 'bbc'")
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
    from extract import extract_corpus

    result = extract_corpus(
        args.input, args.output,
        text_column=args.text_column, text_pair_column=args.text_pair_column,
        label_column=None if args.no_labels else args.label_column, id_column=args.id_column,
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
    p.add_argument("--force", action="store_true", help="rebuild a cache made from another corpus or settings")
    p.add_argument("--info", action="store_true", help="print what the cache holds when done")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_extract)

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
