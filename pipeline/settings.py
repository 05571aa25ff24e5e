"""Names and settings the command line offers, kept free of torch and scikit-learn so that the parser (and
`finetext --help`) builds in a fraction of a second; the modules that do the work import them from here."""
from __future__ import annotations

from dataclasses import dataclass

from finetext.extract.cache import POOLINGS
from finetext.extract.errors import InputError

CACHED_HEADS = ("last-layer", "scalar-mix", "layer-attention")  # what sweep and train fit on a cache: sweep.HEADS
STRATEGY_NAMES = ("random", "uncertainty", "margin", "entropy", "diversity")  # simulate: classify.active.STRATEGIES
DEFAULT_STRATEGIES = ["random", "uncertainty", "margin", "diversity"]
FINETUNE_HEADS = ("layer-attention", "scalar-mix", "last-layer")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OBJECTIVES = ("auto", "contrastive", "classification")  # finetune.choose_objective says what auto picks
FEW_SHOT_PER_CLASS = 64  # objective auto: contrastive up to this many training rows per class (docs/experiments.md)
CHECK_MIN_PER_CLASS = 8  # objective auto: finetune.tuning_check runs where every class has this many rows
PAIR_BATCH = 64  # contrastive: rows per batch, every pair of them in the loss; tuning_check runs above this many rows


@dataclass
class FinetuneSettings:
    """How to fine-tune. lr and epochs were chosen on a held-out tenth of TREC-6's training set with the packaged
    MiniLM (dev accuracy: lr 1e-4 × 4 epochs 93.8%, ×6 94.7%; 2e-4 × 4 94.7%; 5e-5 × 6 94.3%; no layer decay
    93.98%), never on its test set."""

    objective: str = "auto"  # contrastive for few labels per class, else classification (finetune.py)
    head: str = "layer-attention"
    pooling: str = "mean"
    max_length: int = 256  # tokens per document (capped at the model's limit); MiniLM's sentence-transformers limit
    epochs: int = 4
    min_steps: int = 150  # small label budgets get more epochs: at least this many optimiser steps
    batch_size: int = 32
    grad_accum: int = 1  # batches per optimiser step
    lr: float = 2e-4  # the top encoder layer; each layer below gets layer_decay times the one above
    layer_decay: float = 0.9
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps with a linearly rising learning rate, then linear decay
    dropout: float = 0.1  # on whole layers' votes (layer-attention) or the mixed vector (scalar-mix)
    validation: float = 0.1  # fraction held out for early stopping, when every class has min_val_per_class
    min_val_per_class: int = 100
    patience: int = 2  # epochs without a better validation accuracy before stopping
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on a GPU that has it, else fp32

    def __post_init__(self) -> None:
        if self.head not in FINETUNE_HEADS:
            raise InputError(f"head: expected one of {', '.join(FINETUNE_HEADS)}, got {self.head!r}.")
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling: expected one of {', '.join(POOLINGS)}, got {self.pooling!r}.")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        for name in ("max_length", "epochs", "batch_size", "grad_accum", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}.")
        if not 0 <= self.validation < 1 or not 0 <= self.dropout < 1 or not 0 <= self.warmup < 1:
            raise InputError("validation, dropout and warmup are fractions in [0, 1).")
