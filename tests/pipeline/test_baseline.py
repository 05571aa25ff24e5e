"""`finetext baseline setfit`: the rows finetune draws, the real setfit package, results that compare reads."""
from __future__ import annotations

import json

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
    metrics = json.loads((tmp_path / "setfit" / "metrics.json").read_text())
    cell = json.loads((tmp_path / "setfit" / "cells.jsonl").read_text())
    assert metrics["n_train"] == cell["n_train"] == 9 and cell["head"] == "setfit" and cell["budget"] == "3"
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["train_seconds"] > 0
    assert not list(tmp_path.glob("checkpoints"))  # setfit's own checkpoints stay out of the user's folders
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
