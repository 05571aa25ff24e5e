"""Where `finetext extract` spends its time, phase by phase, on the mixed TREC + BBC corpus.

Runs one cold extraction (a fresh process: imports and model loading count, as for a user) and prints the wall
time of each phase: the validating scan, describing the model (config, tokenizer, weights hash), loading it,
tokenising (in the worker thread, overlapped with encoding), encoding (forward + pooling), and writing the file.
On a GPU this shows what bounds extraction when the model is no longer the cost.

    python bench/extract_phases.py [--trec 5452] [--bbc 2225] [--device auto]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from extract_speed import mixed_corpus

import finetext.extract.run as run  # noqa: E402  (extract_speed put the repository on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trec", type=int, default=5452)
    ap.add_argument("--bbc", type=int, default=2225)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="finetext-phases-"))
    n = mixed_corpus(work / "mixed.csv", args.trec, args.bbc)

    seconds: dict[str, float] = {}

    def timed(owner, name: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        setattr(owner, name, wrapper)

    for owner, name in ((run, "scan"), (run, "describe_model"), (run, "load_model"), (run, "write_cache"),
                        (run.BlockEncoder, "tokenize"), (run.BlockEncoder, "encode")):
        timed(owner, name)
    first_encode: list[float] = []
    encode = run.BlockEncoder.encode

    def noting_first(*a, **k):
        if not first_encode:
            first_encode.append(time.perf_counter() - start)
        return encode(*a, **k)
    run.BlockEncoder.encode = noting_first
    start = time.perf_counter()
    run.extract_corpus(str(work / "mixed.csv"), work / "out.h5", max_length=args.max_length, device=args.device,
                       progress=False)
    total = time.perf_counter() - start
    print(f"{n} documents, device {run.resolve_device(args.device)}, cold process: {total:.2f} s end to end "
          f"({n / total:.0f} docs/s)")
    for name, label in (("scan", "validating scan"), ("describe_model", "describe model (config, tokenizer, hash)"),
                        ("load_model", "load model"), ("tokenize", "tokenise (worker thread, overlapped)"),
                        ("encode", "encode: forward + pooling"), ("write_cache", "write the HDF5 file")):
        print(f"  {label:<42} {seconds.get(name, 0.0):7.2f} s")
    print(f"  {'first block reached the model after':<42} {first_encode[0]:7.2f} s")


if __name__ == "__main__":
    sys.exit(main())
