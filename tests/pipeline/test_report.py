"""The sweep report's tables from summaries of cells."""
from __future__ import annotations

from finetext.pipeline.report import labels_needed, summarize, summary_table


def cells(head: str, accuracies: dict[str, list[float]], per_budget_rows: dict[str, int]) -> list[dict]:
    return [{"head": head, "budget": b, "seed": s, "n_train": per_budget_rows[b], "accuracy": a, "macro_f1": a,
             "fit_seconds": 0.1} for b, accs in accuracies.items() for s, a in enumerate(accs)]


ROWS = {"4": 20, "16": 80, "all": 1000}


def test_labels_needed_reads_the_first_budget_within_each_margin():
    summary = summarize(cells("last-layer", {"4": [0.80, 0.82], "16": [0.90, 0.90], "all": [0.94]}, ROWS)
                        + cells("attention", {"4": [0.85, 0.87], "16": [0.94, 0.94], "all": [0.96]}, ROWS))
    table = labels_needed(summary).splitlines()
    assert "96.0% (attention, 1000 (all))" in table[0]
    assert table[2] == "| head | within 5 points | within 2 points | within 1 point |"
    # last-layer: 16/class is 6 points below the best, all 2 below: nothing reaches within 1
    assert table[4] == "| last-layer | 1000 (all) | 1000 (all) | > 1000 |"
    assert table[5] == "| attention | 80 (16/class) | 80 (16/class) | 1000 (all) |"
    total = labels_needed(summary, within=(10,), per_class=False).splitlines()
    assert total[-1] == "| attention | 20 |" and total[-2] == "| last-layer | 80 |"


def test_summary_table_names_budgets_per_class_or_in_total():
    summary = summarize(cells("h", {"4": [0.5, 0.7], "all": [0.9]}, ROWS))
    assert summary_table(summary).splitlines()[0] == "| head | 4/class | all |"
    assert summary_table(summary, per_class=False).splitlines()[0] == "| head | 4 labels | all |"
    assert summary_table(summary).splitlines()[2] == "| h | 60.0 ± 127.1 | 90.0 |"
