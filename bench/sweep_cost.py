"""The cost of a learning-curve grid on cached features against re-encoding the texts for every run.

TREC-6, packaged MiniLM, layer-attention head, 5 budgets (4..64 per class) x 10 seeds = 50 runs:
  cached: extract the training set once (timed separately), then fit every run on cached features;
  naive:  for every run, encode that run's training texts again (length-sorted batches, the same encoder
          code), then fit. The test set is encoded once for both.
Prints both times and the ratio from the same run.

    python bench/sweep_cost.py
"""
from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import SHARED  # noqa: E402  (sets sys.path)
from finetext.classify import LayerAttention, fit_many, sample_budget  # noqa: E402
from finetext.extract import extract_corpus, open_cache  # noqa: E402
from finetext.extract.corpus import Record  # noqa: E402
from finetext.extract.encoder import describe_model, load_model, resolve_model  # noqa: E402
from finetext.extract.run import BlockEncoder, ExtractSettings  # noqa: E402

BUDGETS = (4, 8, 16, 32, 64)
SEEDS = range(10)


def main() -> None:
    train_csv = SHARED / "trec" / "train.csv"
    with open(train_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] for r in rows])
    cache = Path(tempfile.mkdtemp(prefix="finetext-sweep-cost-")) / "trec.h5"

    start = time.perf_counter()
    extract_corpus(str(train_csv), cache, max_length=128, device="cpu", progress=False)
    t_extract = time.perf_counter() - start
    with open_cache(cache) as c:
        X = c.features()
    cells = [(k, s, sample_budget(y, per_class=k, random_state=s)) for k in BUDGETS for s in SEEDS]

    start = time.perf_counter()
    fit_many(LayerAttention(), X, y, [r for _, _, r in cells], [s for _, s, _ in cells])
    t_cached = time.perf_counter() - start

    info, tokenizer = describe_model(None, None)
    encoder = BlockEncoder(load_model(resolve_model(None), None, torch.device("cpu"), "fp32"), tokenizer,
                           torch.device("cpu"), ExtractSettings(max_length=128), 128, None)
    start = time.perf_counter()
    for _, seed, r in cells:  # what a script without a cache does: encode, then fit, run after run
        block = [Record(int(i), str(i), texts[i], None, y[i]) for i in r]
        Xr = encoder.encode(encoder.tokenize(block))["pool_mean"].astype(np.float32)
        LayerAttention(random_state=seed).fit(Xr, y[r])
    t_naive = time.perf_counter() - start

    print(f"TREC-6: {len(cells)} runs ({len(BUDGETS)} budgets x {len(SEEDS)} seeds), layer-attention, CPU")
    print(f"cached: extract once {t_extract:6.1f} s + grid {t_cached:6.1f} s = {t_extract + t_cached:6.1f} s")
    print(f"naive:  re-encode each run's texts and fit        {t_naive:6.1f} s")
    print(f"grid on the cache is {t_naive / t_cached:.1f}x faster than the naive grid; "
          f"{t_naive / (t_extract + t_cached):.1f}x counting the one extraction")


if __name__ == "__main__":
    main()
