"""Deciding how each row set trains, before anything trains; heads.py then trains the plans in stacks.

A plan follows from a set's labels, and with few labels from one cheap check on its labelled rows:

- **Validated or not.** With enough labels (MIN_VAL_PER_CLASS per class on average, and every class with 2 rows or
  more) a head trains `n_members` members, each early-stopped on its own stratified fold, so together they use
  every row; with fewer it trains one member for a fixed number of epochs.
- **The linear part's normalisation** (features.normalization_stats). A validated set standardises every dimension
  of every layer alike ("standard"). With few labels a per-layer logistic regression is cross-validated on the
  labelled rows (priors.cv_logliks): where another layer predicts them better than the last one, the set
  standardises too; otherwise it scales each document's vector to unit length and weights each layer by its
  isotropy ("layer"), which leans on the last layer.
- **Kernel features.** A validated set of N_LANDMARKS rows or more also trains an ensemble on RBF kernel features
  of each layer (kernel.py), averaged with the linear one.

Why these and not the alternatives that were measured: docs/heads.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from finetext.classify.priors import cv_logliks, last_layer_loses

MIN_VAL_PER_CLASS = 100  # labels per class, on average, from which an ensemble early-stops on folds
N_LANDMARKS = 512  # kernel features per layer: the Nyström landmarks drawn from the training rows


@dataclass(frozen=True)
class Plan:
    """How one row set trains."""

    validated: bool  # n_members members early-stopped on folds; else one member for a fixed number of epochs
    normalization: str  # the linear part's features: "standard" or "layer"
    landmarks: int  # > 0: also an ensemble on this many RBF kernel features per layer ("layer"-normalised)

    @property
    def parts(self) -> tuple[str, ...]:
        return ("linear", "rbf") if self.landmarks else ("linear",)


def validates(codes: np.ndarray, n_classes: int, rows: np.ndarray, n_members: int) -> bool:
    """Whether a set's ensemble early-stops on folds: on average MIN_VAL_PER_CLASS labels per class or more, and
    every class of the set with 2 rows or more (the folds deal each class's rows round-robin and a member leaves
    out one fold). A class with fewer rows than members is missing from some validation folds, which is fine:
    TREC-50 has classes of 4 among 5,452 questions."""
    if n_members < 2:
        return False
    counts = np.bincount(codes[rows], minlength=n_classes)[np.unique(codes[rows])]
    return bool(counts.mean() >= MIN_VAL_PER_CLASS and counts.min() >= 2)


def plan_sets(X: np.ndarray, codes: np.ndarray, n_classes: int, row_sets: Sequence[np.ndarray],
              seeds: Sequence[int], n_members: int, device: torch.device) -> list[Plan]:
    """One Plan per row set. X: (n_docs, L, H); codes: (n_docs,) class indices. The check of the sets that do not
    validate runs for all of them at once, on `device`."""
    validated = [validates(codes, n_classes, rows, n_members) for rows in row_sets]
    few = [i for i, v in enumerate(validated) if not v]
    logliks = dict(zip(few, cv_logliks(X, codes, [row_sets[i] for i in few], [seeds[i] for i in few], "layer",
                                       device)))
    plans = []
    for i, rows in enumerate(row_sets):
        if validated[i]:
            plans.append(Plan(True, "standard", N_LANDMARKS if len(rows) >= N_LANDMARKS else 0))
        else:
            plans.append(Plan(False, "standard" if last_layer_loses(logliks[i], len(rows)) else "layer", 0))
    return plans
