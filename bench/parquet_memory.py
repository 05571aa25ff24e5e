"""Peak memory of reading Parquet corpora of growing size, each in a fresh process, side by side in one run:

  scan:     reading and validating every row (`finetext.extract.corpus.scan`), 100,000 against 1,000,000 rows;
  extract:  `finetext extract --max-length 16` with the packaged MiniLM, 10,000 against 100,000 rows
            (bench/memory_probe.py: resident and live MiB).

Short generated texts ("document 123 about rates ..."), two labels. Targets (issue #23): each ratio <= 1.3.

    python bench/parquet_memory.py [--skip-extract]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common import ROOT, cpu_name  # noqa: E402  (sets sys.path)

OUT = ROOT / "runs" / "bench" / "parquet"
SCAN = ("import sys; from finetext.extract.corpus import CorpusSpec, scan; s = scan(CorpusSpec(sys.argv[1])); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print(s.n_docs, int(hwm) / 1024)")


def corpus(rows: int) -> Path:
    path = OUT / f"{rows}.parquet"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        writer = None
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            table = pa.table({"text": [f"document {i} about {'rates' if i % 2 else 'goals'} and more"
                                       for i in range(start, start + n)],
                              "label": [("rates", "goals")[i % 2] for i in range(start, start + n)]})
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
    return path


def scan_mib(rows: int) -> float:
    out = subprocess.run([sys.executable, "-c", SCAN, str(corpus(rows))], capture_output=True, text=True, check=True)
    n, mib = out.stdout.split()
    assert int(n) == rows
    return float(mib)


def extract_mib(rows: int) -> tuple[float, str]:
    cache = OUT / f"{rows}.h5"
    cache.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("memory_probe.py")), str(corpus(rows)),
                          "-o", str(cache), "--max-length", "16", "--device", "cpu"],
                         capture_output=True, text=True, check=True)
    resident, live = out.stdout.split()[-2:]
    return float(resident), live


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-extract", action="store_true")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}")
    small, large = scan_mib(100_000), scan_mib(1_000_000)
    print(f"scan     100,000 rows {small:8.1f} MiB   1,000,000 rows {large:8.1f} MiB   ratio {large / small:.2f} "
          "(target <= 1.3)")
    if not args.skip_extract:
        (small, small_live), (large, large_live) = extract_mib(10_000), extract_mib(100_000)
        print(f"extract   10,000 rows {small:8.1f} MiB   100,000 rows {large:8.1f} MiB   ratio {large / small:.2f} "
              f"(target <= 1.3; live {small_live} -> {large_live} MiB)")


if __name__ == "__main__":
    main()
