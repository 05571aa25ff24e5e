"""Fixtures of the classify tests."""
from __future__ import annotations

import pytest

import finetext.classify.heads as heads
import finetext.classify.plan as plan


@pytest.fixture
def small_plans(monkeypatch):
    """Scale the heads' fixed settings down to toy data: small(min_val_per_class, landmarks=..., max_epochs=...,
    patience=...) lets sets of a few dozen rows per class validate, and train kernel parts on few landmarks."""
    def small(min_val_per_class: int, landmarks: int | None = None, max_epochs: int | None = None,
              patience: int | None = None) -> None:
        monkeypatch.setattr(plan, "MIN_VAL_PER_CLASS", min_val_per_class)
        for module, name, value in ((plan, "N_LANDMARKS", landmarks), (heads, "MAX_EPOCHS", max_epochs),
                                    (heads, "PATIENCE", patience)):
            if value is not None:
                monkeypatch.setattr(module, name, value)
    return small
