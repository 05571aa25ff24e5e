"""Do features extracted on an accelerator match the CPU's? TREC-6 test questions, packaged MiniLM.

Extracts the same texts on the CPU in fp32 (the reference) and on `--device` in each compute dtype, then prints
per compute dtype the largest absolute difference of the stored mean-pooled features, the smallest cosine
between a document's CPU and device vector (any layer), and whether a last-layer probe fitted on the CPU
features predicts the same labels on the device's.

    python bench/device_parity.py [--device cuda] [--dtypes fp32,bf16,fp16]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import SHARED

from finetext.classify import LastLayerLogReg
from finetext.extract import extract_corpus, open_cache


def features(corpus: str, out: Path, device: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    extract_corpus(corpus, out, device=device, compute_dtype=dtype, storage_dtype="float32", progress=False)
    with open_cache(out) as c:
        return c.features("mean"), c.label_strings()  # (n, layers, hidden), (n,)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    args = ap.parse_args()
    corpus = str(SHARED / "trec" / "test.csv")
    work = Path(tempfile.mkdtemp(prefix="finetext-parity-"))
    ref, y = features(corpus, work / "cpu.h5", "cpu", "fp32")
    probe = LastLayerLogReg(random_state=0).fit(ref, y)
    expected = probe.predict(ref)
    print(f"reference: cpu fp32, {ref.shape[0]} docs × {ref.shape[1]} layers × {ref.shape[2]}")
    for dtype in args.dtypes.split(","):
        got, _ = features(corpus, work / f"{dtype}.h5", args.device, dtype)
        cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
        same = (probe.predict(got) == expected).mean()
        print(f"{args.device} {dtype:<5} max |Δ| {np.abs(ref - got).max():.2e}   min cosine {cos.min():.6f}   "
              f"probe labels equal to CPU's: {same:.1%}")


if __name__ == "__main__":
    main()
