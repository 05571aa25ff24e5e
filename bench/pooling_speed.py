"""Mean pooling of every hidden state: per-layer batched matmul (finetext) against stack + einsum (before).

    python bench/pooling_speed.py [--trec 2000] [--bbc 400] [--repeats 3]

Runs `finetext extract` end to end on the mixed TREC + BBC corpus of extract_speed.py with each pooling
implementation, alternating, best of `repeats` each, and prints the times and their ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from extract_speed import mixed_corpus

import finetext.extract.run as run
from finetext.extract import extract_corpus
from finetext.extract.pooling import pool


def stacked_einsum_mean(hidden, mask: torch.Tensor, method: str) -> torch.Tensor:
    """The previous implementation: one (layers, batch, seq, hidden) copy, then an einsum. (batch, layers, hidden)"""
    h = torch.stack(list(hidden))
    m = mask.to(h.dtype)
    return torch.einsum("lbsh,bs->blh", h, m) / m.sum(1).clamp(min=1)[:, None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trec", type=int, default=2000)
    ap.add_argument("--bbc", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="finetext-bench-"))
    corpus = work / "mixed.csv"
    n = mixed_corpus(corpus, args.trec, args.bbc)
    best = {"stack + einsum": float("inf"), "per-layer bmm": float("inf")}
    for _ in range(args.repeats):
        for name, f in (("stack + einsum", stacked_einsum_mean), ("per-layer bmm", pool)):
            run.pool = f
            start = time.perf_counter()
            extract_corpus(str(corpus), work / "a.h5", max_length=256, device="cpu", progress=False, force=True)
            best[name] = min(best[name], time.perf_counter() - start)
    run.pool = pool
    for name, t in best.items():
        print(f"{name:<16} {t:6.2f} s  {n / t:6.1f} docs/s  (finetext extract, {n} docs, mean pooling)")
    print(f"per-layer bmm is {best['stack + einsum'] / best['per-layer bmm']:.2f}x faster end to end")


if __name__ == "__main__":
    main()
