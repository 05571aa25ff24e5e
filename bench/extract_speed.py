"""Extraction speed on a mixed-length real corpus (TREC questions and BBC articles), packaged MiniLM.

Prints docs/s and tokens/s for
  (a) `finetext extract` end to end (reading, validation, tokenising, HDF5 writing included);
  (b) a bare loop over length-sorted token-budget batches: forward pass with all hidden states and mean
      pooling only, inputs pre-tokenised, nothing stored: the practical limit of this hardware;
  (c) the usual naive way: fixed-size batches in file order, padded to the longest, same forward and pooling;
and the ratios a/b and a/c from the same run. Then peak memory of a `finetext extract` process for the corpus
and for 10x the corpus, which must stay flat: resident (max RSS) and live (RSS less the free chunks glibc's
malloc keeps for reuse; bench/memory_probe.py). Memory is bounded by the block (documents encoded
and written together, 4,096 by default), and the corpus alone is smaller than one block, so the pair is also
measured with blocks of --memory-block-docs, where both runs hold several full blocks. Last, many processes:
`torchrun --nproc-per-node R finetext extract` against one `finetext extract` process, both started as commands
(start-up included) in alternation, best of --repeats: on a CPU R ranks of one thread each against one process of R
threads; on GPUs one rank per GPU against one process on one GPU.

    python bench/extract_speed.py [--trec 2000] [--bbc 400] [--max-length 256] [--device auto] [--dtype fp32]
                                  [--ranks R]
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetext.extract import extract_corpus  # noqa: E402
from finetext.extract.batching import token_budget_batches  # noqa: E402
from finetext.extract.corpus import CorpusSpec, iter_records  # noqa: E402
from finetext.extract.encoder import load_model, load_tokenizer, resolve_device, resolve_model  # noqa: E402
from finetext.extract.pooling import pool  # noqa: E402

from common import cpu_name  # noqa: E402  (bench/ is the script's folder)


def mixed_corpus(path: Path, n_trec: int, n_bbc: int, copies: int = 1) -> int:
    trec = ROOT.parent / "shared" / "data" / "trec" / "train.csv"
    if not trec.exists():
        sys.exit(f"{trec} is missing: this benchmark needs the shared TREC-6 data.")
    with open(trec, newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)][:n_trec]
    rows += [(r.text, r.label) for r in iter_records(CorpusSpec("bbc"))][:n_bbc]
    random.Random(0).shuffle(rows)  # file order mixes short and long documents, as real corpora do
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for c in range(copies):
            w.writerows((f"{c}-{i}", t, label) for i, (t, label) in enumerate(rows))
    return len(rows) * copies


def forward_mean(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch, output_hidden_states=True)
    return pool([h.float() for h in out.hidden_states], batch["attention_mask"], "mean").cpu()


def bare_sorted(model, tokenizer, texts, max_length, batch_tokens, device) -> tuple[float, int]:
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    batches = []
    for idx in token_budget_batches(lengths, batch_tokens):
        enc = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        batches.append({k: v.to(device) for k, v in enc.items()})
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            forward_mean(model, batch)
    return time.perf_counter() - start, int(lengths.sum())


def naive(model, tokenizer, texts, max_length, batch_size, device) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            forward_mean(model, {k: v.to(device) for k, v in enc.items()})
    return time.perf_counter() - start


def peak_memory_mib(corpus: Path, out: Path, max_length: int, device: str,
                    *options: str) -> tuple[float, float | None]:
    """Peak resident and live memory (MiB; see memory_probe.py, None where it cannot tell live memory) of one
    `finetext extract` in a fresh process."""
    cmd = [sys.executable, str(ROOT / "bench" / "memory_probe.py"), str(corpus), "-o", str(out), "--quiet",
           "--max-length", str(max_length), "--device", device, "--force", *options]
    resident, live = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout.split()[-2:]
    return float(resident), None if live == "n/a" else float(live)


def ranks_against_one(corpus: Path, work: Path, max_length: int, device: str, ranks: int,
                      repeats: int) -> tuple[float, float]:
    """Best seconds of `torchrun --nproc-per-node ranks finetext extract` and of one `finetext extract` process."""
    bin_dir = Path(sys.executable).parent
    one_env = {**os.environ, "OMP_NUM_THREADS": str(ranks)}  # a CPU's threads all to the one process
    many_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(corpus), "--max-length", str(max_length), "--device", device, "--quiet"]
    times: dict[str, list[float]] = {"many": [], "one": []}
    for _ in range(repeats):
        for kind in ("many", "one"):
            cmd = ([str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(ranks), "--no-python"]
                   if kind == "many" else []) + [str(bin_dir / "finetext"), "extract", *args, "-o",
                                                 str(work / f"{kind}.h5")]
            # each run writes the cache anew: shards skip a cache that is up to date, even under --force
            (work / f"{kind}.h5").unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run(cmd, env=many_env if kind == "many" else one_env, check=True, capture_output=True)
            times[kind].append(time.perf_counter() - start)
    return min(times["many"]), min(times["one"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trec", type=int, default=2000)
    ap.add_argument("--bbc", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: finetext's own for the device")
    ap.add_argument("--naive-batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="compute dtype of every loop")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs of a and b; the best of each counts")
    ap.add_argument("--memory-max-length", type=int, default=64, help="max length for the memory runs")
    ap.add_argument("--memory-block-docs", type=int, default=400, help="the block size of the second memory pair")
    ap.add_argument("--ranks", type=int, default=None, help="torchrun processes (default: the GPUs, or 2 on a CPU)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    args.batch_tokens = args.batch_tokens or (4096 if device.type == "cpu" else 16384)
    work = Path(tempfile.mkdtemp(prefix="finetext-bench-"))
    corpus = work / "mixed.csv"
    n = mixed_corpus(corpus, args.trec, args.bbc)
    texts = [r.text for r in iter_records(CorpusSpec(str(corpus)))]
    path = resolve_model(None)
    tokenizer = load_tokenizer(path, None)
    model = load_model(path, None, device, args.dtype)  # (b) and (c) in the dtype (a) computes in
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({cpu_name()})"
    print(f"device: {name}; corpus: {n} docs ({args.trec} TREC questions + {args.bbc} BBC articles, shuffled), "
          f"max_length {args.max_length}, {args.dtype}, "
          f"batch budget {args.batch_tokens} tokens")
    naive(model, tokenizer, texts[:64], args.max_length, args.naive_batch, device)  # warm-up

    # a and b alternate and keep their best time: this machine's noise hits both alike; each pair's own ratio too,
    # since the machine's speed drifts between pairs more than within one
    pairs = []
    for _ in range(args.repeats):
        t, tokens = bare_sorted(model, tokenizer, texts, args.max_length, args.batch_tokens, device)
        start = time.perf_counter()
        extract_corpus(str(corpus), work / "a.h5", max_length=args.max_length, device=args.device,
                       compute_dtype=args.dtype, batch_tokens=args.batch_tokens, progress=False, force=True)
        pairs.append((time.perf_counter() - start, t))
    t_a, t_b = min(a for a, _ in pairs), min(b for _, b in pairs)
    t_c = naive(model, tokenizer, texts, args.max_length, args.naive_batch, device)

    for label, t in (("(a) finetext extract, end to end", t_a), ("(b) bare sorted forward, no storage", t_b),
                     (f"(c) naive: batches of {args.naive_batch} in file order", t_c)):
        print(f"{label:<42} {t:7.1f} s  {n / t:8.1f} docs/s  {tokens / t:9.0f} tokens/s")
    print(f"a/b = {t_b / t_a:.3f}   (speed of a relative to b; target >= 0.95)")
    print(f"      pair by pair: {', '.join(f'{b / a:.3f}' for a, b in pairs)}; median "
          f"{float(np.median([b / a for a, b in pairs])):.3f}")
    print(f"a/c = {t_c / t_a:.2f}    (speed of a relative to c; target >= 1.5)")

    big = work / "mixed10.csv"
    mixed_corpus(big, args.trec, args.bbc, copies=10)
    for label, options in (("default blocks", ()), (f"blocks of {args.memory_block_docs}",
                                                     ("--block-docs", str(args.memory_block_docs)))):
        (m1, live1), (m10, live10) = (peak_memory_mib(c, work / "m.h5", args.memory_max_length, args.device, *options)
                                      for c in (corpus, big))
        print(f"peak memory (max RSS, max_length {args.memory_max_length}, {label}): corpus {m1:.0f} MiB, "
              f"10x corpus {m10:.0f} MiB, ratio {m10 / m1:.2f}")
        if live1 is not None and live10 is not None:
            print(f"  live (RSS less malloc's free heap): corpus {live1:.0f} MiB, 10x corpus {live10:.0f} MiB, "
                  f"ratio {live10 / live1:.2f}")

    ranks = args.ranks or (torch.cuda.device_count() if device.type == "cuda" else 2)
    if ranks < 2:
        return  # one GPU: nothing to share out
    many, one = ranks_against_one(corpus, work, args.max_length, args.device, ranks, min(args.repeats, 3))
    what = f"{ranks} GPUs against 1" if device.type == "cuda" else f"{ranks} ranks of 1 thread against 1 of {ranks}"
    print(f"torchrun, {what}: {many:.1f} s against {one:.1f} s ({n / many:.1f} against {n / one:.1f} docs/s), "
          f"speed ratio {one / many:.2f}")


if __name__ == "__main__":
    main()
