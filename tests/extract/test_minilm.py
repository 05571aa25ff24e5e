"""The packaged MiniLM on real BBC text, and resume after a real SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetext.extract import extract_corpus, open_cache
from finetext.extract.cache import partial_dir

pytestmark = pytest.mark.slow


def test_minilm_mean_pooling_reproduces_sentence_transformers(tmp_path, minilm, bbc_slice):
    st = pytest.importorskip("sentence_transformers")
    out = tmp_path / "bbc.h5"
    extract_corpus(str(bbc_slice), out, model=str(minilm), max_length=128, storage_dtype="float32",
                   device="cpu", progress=False)
    with open_cache(out) as cache:
        assert cache.features().shape == (30, 7, 384)
        assert cache.label_names == ["business", "entertainment", "politics", "sports", "tech"]
        last = cache.features()[:, -1]  # (docs, hidden)
        ids = cache.ids
    texts = [(bbc_slice / i).read_text(encoding="utf-8", errors="replace") for i in ids]
    model = st.SentenceTransformer(str(minilm), device="cpu")
    model.max_seq_length = 128
    reference = model.encode(texts, normalize_embeddings=True)
    ours = last / np.linalg.norm(last, axis=1, keepdims=True)
    cosine = (ours * reference).sum(1)
    assert cosine.min() > 0.9999, cosine.min()


def test_resume_after_sigkill_gives_identical_arrays(tmp_path, minilm, bbc_slice):
    args = [str(bbc_slice), "--model", str(minilm), "--max-length", "256", "--block-docs", "3",
            "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in both runs: same arithmetic
    cmd = [sys.executable, "-m", "finetext.pipeline.cli", "extract"]
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen(cmd + args + ["--output", str(killed)], env=env)
    parts = partial_dir(killed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("block-*.npz"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("block-*.npz")))
    assert 3 <= done < 10, f"the kill should land mid-run, found {done} of 10 blocks"
    assert not killed.exists()
    subprocess.run(cmd + args + ["--output", str(killed)], env=env, check=True)
    clean = tmp_path / "clean.h5"
    subprocess.run(cmd + args + ["--output", str(clean)], env=env, check=True)
    with open_cache(killed) as a, open_cache(clean) as b:
        np.testing.assert_array_equal(a.features(), b.features())
        assert a.ids == b.ids and a.meta["corpus_fingerprint"] == b.meta["corpus_fingerprint"]
    assert not parts.exists()
