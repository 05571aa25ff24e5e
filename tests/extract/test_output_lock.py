"""One writer per output, with real processes: a second writer is refused at once, a killed holder frees the
output, two extracts racing to one cache leave one whole result."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from finetext.extract import OutputBusyError, open_cache, verify_cache
from finetext.extract.outputs import exclusive, lock_path
from finetext.pipeline.cli import main
from tests.conftest import write_csv

HOLD = ("import sys, time; from finetext.extract.outputs import exclusive\n"
        "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def held_by_another_process(output):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_output(tmp_path):
    output = tmp_path / "c.h5"
    holder = held_by_another_process(output)
    try:
        with pytest.raises(OutputBusyError, match=rf"c.h5 is being written by another run \(pid {holder.pid}"):
            with exclusive(output):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with exclusive(output):  # the kernel released the dead holder's lock
        assert lock_path(output).exists()
    assert not lock_path(output).exists()  # nothing left behind


def test_the_commands_refuse_an_output_in_use_in_one_line(tmp_path, small_csv, tiny_bert, capsys):
    cache = tmp_path / "c.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(cache), "-q"]) == 0
    for output, args in ((tmp_path / "d.h5", ["extract", str(small_csv), "--model", str(tiny_bert)]),
                         (tmp_path / "sweep", ["sweep", "--train", str(cache), "--test", str(cache), "-q"]),
                         (tmp_path / "head", ["train", "--train", str(cache), "--head", "last-layer"])):
        holder = held_by_another_process(output)
        try:
            capsys.readouterr()
            assert main([*args, "-o", str(output)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"is being written by another run (pid {holder.pid}" in err
            assert not output.exists()  # refused before writing anything
        finally:
            holder.kill()
            holder.wait()


def test_leftovers_of_dead_runs_are_removed_by_the_next(tmp_path, small_csv, tiny_bert):
    cache = tmp_path / "c.h5"
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(cache), "-q"]) == 0
    stale = [tmp_path / ".c.h5.4242.tmp", tmp_path / ".c.h5.old-4242"]  # a file being published, a staging folder
    stale[0].write_bytes(b"half a file")
    stale[1].mkdir()
    (cache.with_name("c.h5.partial")).mkdir()  # left by a kill after publishing, before clean-up
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(cache), "-q"]) == 0  # up to date
    assert not any(p.exists() for p in stale) and not cache.with_name("c.h5.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "small.csv"]
    others = [tmp_path / ".c.h5.v2.lock", tmp_path / ".c.h5.v2.4242.tmp"]  # another output's, c.h5.v2: not ours
    for path in others:
        path.write_text("held by another run")
    assert main(["extract", str(small_csv), "--model", str(tiny_bert), "-o", str(cache), "-q"]) == 0
    assert all(p.exists() for p in others)


def test_two_extracts_racing_to_one_cache_leave_one_whole_result(tmp_path, tiny_bert):
    rows = [{"text": f"document {i} about {'markets' if i % 2 else 'football'} and more words", "label": i % 2}
            for i in range(3000)]
    corpus = write_csv(tmp_path / "corpus.csv", rows)
    other = write_csv(tmp_path / "other.csv", rows[::-1])  # another corpus to the same output
    cache = tmp_path / "c.h5"
    command = [sys.executable, "-m", "finetext", "extract", "--model", str(tiny_bert), "-o", str(cache), "-q",
               "--device", "cpu", "--force"]
    runs = [subprocess.Popen([*command[:4], str(path), *command[4:]], stderr=subprocess.PIPE, text=True)
            for path in (corpus, other)]
    codes = [run.wait(timeout=300) for run in runs]
    errors = [run.stderr.read() for run in runs]
    assert sorted(codes) == [0, 2], errors  # one wrote, the other was refused at once
    assert "is being written by another run" in errors[codes.index(2)]
    verify_cache(cache)
    winner = (corpus, other)[codes.index(0)]
    with open_cache(cache) as c:
        ids, X = c.ids, c.features("mean")
    reference = tmp_path / "ref.h5"
    assert main(["extract", str(winner), "--model", str(tiny_bert), "-o", str(reference), "-q", "--device", "cpu"]) == 0
    with open_cache(reference) as c:  # the published file is all the winner's: ids and every feature row
        assert c.ids == ids
        np.testing.assert_array_equal(c.features("mean"), X)
