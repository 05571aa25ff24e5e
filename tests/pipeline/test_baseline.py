"""`finetext baseline setfit`: the rows finetune draws, the real setfit package, results that compare reads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetext.classify import sample_budget
from finetext.extract import InputError
from finetext.pipeline.baseline import drawn_rows, run_setfit
from finetext.pipeline.cli import main
from finetext.pipeline.finetune import Task
from tests.pipeline.test_finetune import FAST, _records, write_csv


def test_the_baseline_draws_the_rows_finetune_draws():
    task = Task("topics", _records(10, 0), budget=4)
    labels = np.array([r.label for r in task.train])
    for seed in (0, 1, 2):
        np.testing.assert_array_equal(drawn_rows(task, seed), sample_budget(labels, per_class=4, random_state=seed))
    assert len(drawn_rows(Task("topics", _records(10, 0)), 0)) == 30  # no budget: every row


def test_a_baseline_without_a_test_corpus_is_refused(tmp_path):
    with pytest.raises(InputError, match="give --test FILE"):
        run_setfit(Task("topics", _records(4, 0), budget=2), tmp_path / "b")


@pytest.mark.slow
def test_setfit_trains_on_the_drawn_rows_and_compare_puts_it_beside_finetune(tmp_path, tiny_bert, capsys):
    pytest.importorskip("setfit")
    for split, n, seed in (("train", 6, 0), ("test", 4, 1)):
        write_csv(tmp_path / f"{split}.csv", [{"text": r.text, "label": r.label} for r in _records(n, seed)])
    train, test = str(tmp_path / "train.csv"), str(tmp_path / "test.csv")
    assert main(["baseline", "setfit", train, "--test", test, "--budget", "3", "--seed", "1",
                 "-o", str(tmp_path / "setfit"), "-q"]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("setfit on 9 training documents") and "embedding_loss" not in said.out
    assert "Loading weights" not in said.err and "pin_memory" not in said.err  # --quiet: no bars, logs or warnings
    metrics = json.loads((tmp_path / "setfit" / "metrics.json").read_text())
    cell = json.loads((tmp_path / "setfit" / "cells.jsonl").read_text())
    assert metrics["n_train"] == cell["n_train"] == 9 and cell["head"] == "setfit" and cell["budget"] == "3"
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["train_seconds"] > 0
    assert metrics["resumed_from_step"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["setfit", "test.csv", "train.csv"]
    ft = ["finetune", train, "--test", test, "--budget", "3", "--seed", "1", "--model", str(tiny_bert),
          "-o", str(tmp_path / "ft"), "--quiet", *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()
                                                   if k not in ("dropout", "warmup")]]
    assert main(ft) == 0
    fine_tuned = json.loads((tmp_path / "ft" / "cells.jsonl").read_text().splitlines()[0])
    assert fine_tuned["rows"] == cell["rows"]  # the same labelled rows for both methods
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "setfit"), str(tmp_path / "ft"), "-o", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "setfit" in table and "finetune-layer-attention" in table
    assert (tmp_path / "cmp" / "learning_curves.png").exists()


@pytest.mark.slow
def test_a_setfit_run_killed_with_sigkill_resumes_from_its_checkpoint_to_the_same_result(tmp_path, tiny_bert, capsys):
    pytest.importorskip("setfit")
    for split, n, seed in (("train", 12, 0), ("test", 6, 1)):
        write_csv(tmp_path / f"{split}.csv", [{"text": r.text, "label": r.label} for r in _records(n, seed)])
    args = ["baseline", "setfit", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--budget", "10",
            "--model", str(tiny_bert), "-q", "-o"]
    assert main(args + [str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())

    # a checkpoint after every step, then SIGKILL once one past the first few is complete
    run = tmp_path / ".killed.setfit-run"
    code = ("import sys; import finetext.pipeline.baseline as b; b.CHECKPOINT_SECONDS = 0; "
            "from finetext.pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, *args, str(tmp_path / "killed")])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not [c for c in run.glob("checkpoint-*/finetext.json")
                                               if int(c.parent.name.split("-")[1]) >= 5]:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()
    steps = [int(c.parent.name.split("-")[1]) for c in run.glob("checkpoint-*/finetext.json")]
    assert steps and max(steps) >= 5, "the kill should land after a checkpoint"

    capsys.readouterr()
    assert main(args + [str(tmp_path / "killed")]) == 0
    assert "resuming SetFit from checkpoint-" in capsys.readouterr().err
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == max(steps)
    for key in ("test_accuracy", "test_macro_f1", "n_train"):
        assert resumed[key] == clean[key]
    assert not run.exists()  # the checkpoints go once the results are written


@pytest.mark.slow
def test_checkpoints_of_another_run_are_not_resumed(tmp_path, tiny_bert, capsys):
    pytest.importorskip("setfit")
    write_csv(tmp_path / "train.csv", [{"text": r.text, "label": r.label} for r in _records(6, 0)])
    write_csv(tmp_path / "test.csv", [{"text": r.text, "label": r.label} for r in _records(2, 1)])
    stale = tmp_path / ".b.setfit-run" / "checkpoint-3"
    stale.mkdir(parents=True)
    (stale / "finetext.json").write_text(json.dumps({"seconds": 5.0, "run": "another run"}))
    capsys.readouterr()
    assert main(["baseline", "setfit", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                 "--budget", "3", "--model", str(tiny_bert), "-q", "-o", str(tmp_path / "b")]) == 0
    assert "holds checkpoints of another SetFit run" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["resumed_from_step"] is None
    assert not (tmp_path / ".b.setfit-run").exists()
