"""SIGKILL at seeded random points of a real extract (starting up, loading the model, encoding, writing blocks,
publishing): the rerun always completes to the arrays of an uninterrupted run and leaves nothing behind."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetext.extract import open_cache, verify_cache
from tests.conftest import write_csv


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_bert):
    """The command (without -o), a reference cache from an uninterrupted run, and how long that run took."""
    root = tmp_path_factory.mktemp("sigkill")
    rows = [{"text": f"story {i} about {'rates' if i % 2 else 'goals'} " * (1 + i % 7), "label": i % 3}
            for i in range(1500)]
    corpus = write_csv(root / "corpus.csv", rows)
    command = [sys.executable, "-m", "finetext", "extract", str(corpus), "--model", str(tiny_bert), "--device", "cpu",
               "--block-docs", "100", "-q"]
    reference = root / "reference.h5"
    start = time.monotonic()
    subprocess.run([*command, "-o", str(reference)], check=True)
    return command, reference, time.monotonic() - start


def kill_and_resume(job, folder, delay):
    command, reference, _ = job
    folder.mkdir()
    output = folder / "c.h5"
    run = subprocess.Popen([*command, "-o", str(output)])
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.wait()
    subprocess.run([*command, "-o", str(output)], check=True, capture_output=True)
    verify_cache(output)
    with open_cache(output) as got, open_cache(reference) as want:
        assert got.ids == want.ids and got.meta["corpus_fingerprint"] == want.meta["corpus_fingerprint"]
        np.testing.assert_array_equal(got.features("mean"), want.features("mean"))
        np.testing.assert_array_equal(got.labels, want.labels)
    assert [p.name for p in folder.iterdir()] == ["c.h5"]  # no temporary file, shard folder or lock left


@pytest.mark.parametrize("trial", range(3))
def test_a_kill_at_a_random_point_resumes_to_identical_arrays(job, tmp_path, trial):
    kill_and_resume(job, tmp_path / "out", random.Random(trial).uniform(0.2, 1.2) * job[2])


@pytest.mark.slow
def test_kills_at_many_random_points_all_resume_to_identical_arrays(job, tmp_path):
    rng = random.Random(100)
    for trial in range(20):
        kill_and_resume(job, tmp_path / f"out{trial}", rng.uniform(0.05, 1.3) * job[2])
