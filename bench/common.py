"""Caches of the shared benchmark sets, built once with the packaged MiniLM into runs/caches/."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CACHES = ROOT / "runs" / "caches"

# name -> (train file, test file, reading options)
DATASETS = {
    "trec": ("trec/train.csv", "trec/test.csv", {}),
    "sst2": ("sst2/train.tsv", "sst2/test.csv", {"text_column": "sentence"}),
    "banking77": ("banking77/train.csv", "banking77/test.csv", {"label_column": "category"}),
}


def cpu_name() -> str:
    """The CPU's model name and the threads torch uses, for benchmark headers: figures differ between CPUs
    (an Intel Xeon with AMX and an AMD EPYC gave this project's heads 1.3-3.5x apart), so each run says which."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def build(name: str, max_length: int = 256) -> tuple[Path, Path | None]:
    """Extract (or reuse) the train and test caches of a dataset; BBC has one cache, split later."""
    from finetext.extract import extract_corpus

    CACHES.mkdir(parents=True, exist_ok=True)
    if name == "bbc":
        out = CACHES / "bbc.h5"
        extract_corpus("bbc", out, max_length=max_length)
        return out, None
    train, test, options = DATASETS[name]
    if not (SHARED / train).exists():
        sys.exit(f"{SHARED / train} is missing: this benchmark needs ../shared/data.")
    paths = []
    for split, file in (("train", train), ("test", test)):
        out = CACHES / f"{name}-{split}.h5"
        opts = dict(options)
        if split == "test" and file.endswith(".csv") and "text_column" in opts:
            opts.pop("text_column")  # the derived test CSVs use `text`
        extract_corpus(str(SHARED / file), out, max_length=max_length, **opts)
        paths.append(out)
    return paths[0], paths[1]


def load(name: str, pooling: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """X_train, y_train, X_test, y_test as label strings; BBC split 80/20 stratified with a fixed seed."""
    from sklearn.model_selection import train_test_split

    from finetext.extract import open_cache

    train, test = build(name)
    with open_cache(train) as c:
        X, y = c.features(pooling), c.label_strings()
    if test is None:
        return tuple(train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)[i] for i in (0, 2, 1, 3))
    with open_cache(test) as c:
        return X, y, c.features(pooling), c.label_strings()
