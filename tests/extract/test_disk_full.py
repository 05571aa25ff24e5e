"""Operating-system errors at the outputs: a full disk at every stage of extract is one line and exit 2 (never a
crash), and once space is freed the rerun resumes to the same arrays; a read-only filesystem is one line for every
command that writes. Needs a small tmpfs, which the tests mount where they may (root); skipped elsewhere."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from finetext.extract import open_cache
from finetext.pipeline.cli import main
from tests.conftest import write_csv


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount_point)], check=True)

    try:
        yield mount_point, resize
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_full_disk_at_every_stage_is_one_line_and_the_rerun_resumes_identically(tmp_path, small_disk, tiny_bert):
    disk, resize = small_disk
    rows = [{"text": f"document {i} on {'markets' if i % 3 else 'football'} " * (1 + i % 5), "label": i % 3}
            for i in range(2000)]
    corpus = write_csv(tmp_path / "corpus.csv", rows)
    command = [sys.executable, "-m", "finetext", "extract", str(corpus), "--model", str(tiny_bert), "--device", "cpu",
               "--block-docs", "500", "-q", "--storage-dtype", "float32"]
    reference = tmp_path / "reference.h5"
    subprocess.run([*command, "-o", str(reference)], check=True)
    stages = set()
    for kib in (512, 1200, 1500, 1700, 1900, 2100, 2300, 2600):  # growing: each run keeps the blocks it finished
        resize(kib)
        run = subprocess.run([*command, "-o", str(disk / "c.h5")], capture_output=True, text=True)
        if run.returncode == 0:
            break
        assert run.returncode == 2, run.stderr  # never a crash (a segmentation fault is -11)
        assert run.stderr.count("\n") == 1 and "No space left on device" in run.stderr and "are free" in run.stderr
        stages.add("publishing" if "the cache file needs" in run.stderr else "a block")
    else:
        resize(64 * 1024)
        subprocess.run([*command, "-o", str(disk / "c.h5")], check=True)
    assert stages == {"a block", "publishing"}  # the disk filled while encoding and while publishing
    with open_cache(disk / "c.h5") as got, open_cache(reference) as want:
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.features("mean"), want.features("mean"))
    assert sorted(p.name for p in disk.iterdir()) == ["c.h5"]  # nothing left behind


def test_a_read_only_output_is_one_line_for_every_command_that_writes(tmp_path, small_disk, small_csv, tiny_bert,
                                                                        capsys):
    disk, _ = small_disk
    cache = tmp_path / "c.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(cache), "-q"]) == 0
    assert main(["train", "--train", str(cache), "--head", "last-layer", "-o", str(tmp_path / "head"), "--quiet"]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    for args in (["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(disk / "c.h5")],
                 ["sweep", "--train", str(cache), "--test", str(cache), "-q", "-o", str(disk / "sweep")],
                 ["train", "--train", str(cache), "-o", str(disk / "head")],
                 ["predict", "--head", str(tmp_path / "head"), "--text", "Shares fell.", "-o", str(disk / "p.csv")]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(disk) in err and "read-only: write the output elsewhere" in err, err


def test_extract_refuses_to_start_when_the_disk_cannot_hold_the_cache(small_disk, tmp_path, tiny_bert, capsys):
    disk, _ = small_disk  # 64 KiB
    rows = [{"text": f"note {i}", "label": i % 2} for i in range(400)]
    corpus = write_csv(tmp_path / "c.csv", rows)
    assert main(["extract", str(corpus), "--model", str(tiny_bert), "-o", str(disk / "c.h5"), "--storage-dtype",
                 "float32"]) == 2
    err = capsys.readouterr().err
    assert "will hold about 0.1 MiB of features (400 documents × 3 hidden states × 32 × 4 bytes × 1 pooling)" in err
    assert "No space left on device: this cache (its blocks, then the file) needs" in err and "are free" in err
    assert list(disk.iterdir()) == []  # refused before writing anything
