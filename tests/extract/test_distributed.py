"""Many processes, one cache: torchrun ranks (gloo, CPU) and `--shard I/N` with `merge`, against one process, on
BBC News with the packaged MiniLM; a rank killed with SIGKILL, then the same command again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from finetext.extract import extract_corpus, open_cache
from finetext.extract.cache import partial_dir
from finetext.extract.errors import InputError
from finetext.extract.outputs import exclusive
from finetext.extract.run import block_costs, parse_shard, shard_blocks
from finetext.pipeline.cli import main

BIN = Path(sys.executable).parent  # finetext and torchrun of this environment
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
ARGS = ["bbc", "--max-length", "16", "--storage-dtype", "float32", "--device", "cpu", "--quiet"]


def _torchrun(output: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python",
                             "finetext", "extract", *ARGS, "-o", str(output)], env=ENV, **popen)


def _extract(output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "finetext"), "extract", *ARGS, "-o", str(output), *extra], env=ENV,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The cache one process writes."""
    if not (BIN / "torchrun").exists():
        pytest.skip("torchrun is not installed beside this Python")
    path = tmp_path_factory.mktemp("single") / "bbc.h5"
    assert _extract(path).returncode == 0
    return path


def _same_cache(a: Path, b: Path) -> None:
    with open_cache(a) as x, open_cache(b) as y:
        assert x.ids == y.ids and np.array_equal(x.labels, y.labels) and x.label_names == y.label_names
        differ = {k for k in set(x.meta) | set(y.meta) if x.meta.get(k) != y.meta.get(k)}
        assert differ <= {"created"}, differ  # the same metadata and fingerprints
        assert np.abs(x.features() - y.features()).max() <= 1e-5


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc's parent ids)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


@pytest.mark.slow
def test_torchrun_ranks_write_the_cache_one_process_writes(single, tmp_path):
    out = tmp_path / "bbc.h5"
    assert _torchrun(out).wait(timeout=600) == 0
    _same_cache(single, out)
    assert not partial_dir(out).exists()


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_resumes_on_the_same_command(single, tmp_path):
    out = tmp_path / "bbc.h5"
    job = _torchrun(out, start_new_session=True)
    parts = partial_dir(out)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("block-*.npz"))) < 3:
        time.sleep(0.02)
    ranks = [p for p in _descendants(job.pid) if "finetext" in Path(f"/proc/{p}/cmdline").read_bytes().decode()]
    assert ranks, "the ranks should be running"
    os.kill(ranks[-1], signal.SIGKILL)
    assert job.wait(timeout=300) != 0  # torchrun stops the other rank and fails
    kept = len(list(parts.glob("block-*.npz")))
    assert kept >= 3 and not out.exists()
    assert _torchrun(out).wait(timeout=600) == 0
    _same_cache(single, out)


@pytest.mark.slow
def test_shards_run_apart_and_the_last_publishes_or_merge_does(single, tmp_path, capsys):
    both = tmp_path / "both.h5"  # two shards at once, as a job array runs them: the last to finish publishes
    jobs = [subprocess.Popen([str(BIN / "finetext"), "extract", *ARGS, "-o", str(both), "--shard", f"{i}/2"],
                             env=ENV, stdout=subprocess.PIPE, text=True) for i in range(2)]
    said = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0]
    assert sum("created" in s for s in said) == 1, said
    _same_cache(single, both)

    out = tmp_path / "bbc.h5"
    first = _extract(out, "--shard", "1/2")
    assert first.returncode == 0 and "still to come: shard 0 of 2" in first.stdout, first.stdout
    assert main(["merge", str(out)]) == 2
    assert "shard 0 of 2 not complete" in capsys.readouterr().err
    with exclusive(out):  # another process holds the cache: the last shard leaves publishing to it
        last = _extract(out, "--shard", "0/2")
    assert last.returncode == 0 and "another shard is publishing" in last.stdout, last.stdout
    assert not out.exists()
    assert main(["merge", str(out), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: created")
    _same_cache(single, out)
    assert not partial_dir(out).exists()
    assert _extract(out, "--shard", "0/2").stdout.startswith(f"{out}: up to date")
    assert main(["merge", str(out)]) == 0 and capsys.readouterr().out.startswith(f"{out}: up to date")
    assert main(["merge", str(tmp_path / "none.h5")]) == 2 and "no shards to merge" in capsys.readouterr().err


def test_blocks_are_balanced_by_estimated_tokens_across_shards(monkeypatch, tmp_path):
    chars = np.array([4000] * 10 + [40] * 90, dtype=np.int32)  # long rows first: by rows, shard 0 gets the work
    costs = block_costs(chars, 10, 256)
    assert costs.tolist() == [2560] + [120] * 9  # 4000 characters pass 256 tokens: capped
    parts = shard_blocks(costs, 2)
    assert sorted(sum(parts, [])) == list(range(10)) and parts == [[0], list(range(1, 10))]
    ramp = np.arange(1, 41, dtype=float)
    loads = [ramp[p].sum() for p in shard_blocks(ramp, 4)]
    assert max(loads) - min(loads) <= 40  # within one block of each other
    assert parse_shard("3/8").index == 3
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError, match="expected I/N"):
            parse_shard(bad)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="under torchrun"):
        extract_corpus("bbc", tmp_path / "c.h5", shard="1/2")


def test_shards_with_force_replace_a_cache_of_other_settings_once(tmp_path, small_csv, tiny_bert):
    from finetext.extract.errors import CacheMismatchError

    out = tmp_path / "c.h5"
    run = dict(model=str(tiny_bert), max_length=16, block_docs=5, progress=False)  # 2 blocks, one a shard
    extract_corpus(str(small_csv), out, **{**run, "max_length": 8})
    with pytest.raises(CacheMismatchError):
        extract_corpus(str(small_csv), out, shard="0/2", **run)
    said = [extract_corpus(str(small_csv), out, shard=f"{i}/2", force=True, **run).status for i in (0, 1, 0)]
    assert said[0] == "shard 0/2 written; still to come: shard 1 of 2" and said[1:] == ["created", "up to date"]
    with open_cache(out) as cache:
        assert cache.meta["max_length"] == 16 and len(cache.ids) == 10
