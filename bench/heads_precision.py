"""Layer-attention in fp32 against bf16 (`precision="bf16"`) on cached MiniLM features of TREC-6.

All 5,452 training questions (the validated 5-member ensemble, the slowest fit of a sweep) for a few seeds,
and 4..64 labels per class x 10 seeds through `fit_many`; the two precisions alternate. Prints wall times,
the ratio and test accuracies from the same run. bf16 pays on hardware that multiplies it natively (a CPU
with AMX or AVX512-BF16, a recent GPU); elsewhere it can be slower.

    python bench/heads_precision.py [--seeds-all 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import cpu_name, load  # noqa: E402  (sets sys.path)
from finetext.classify import LayerAttention, fit_many, sample_budget  # noqa: E402

BUDGETS = (4, 8, 16, 32, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds-all", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    X, y, Xt, yt = load("trec")
    cells = [(k, s, sample_budget(y, per_class=k, random_state=s)) for k in BUDGETS for s in range(10)]
    seconds = {"fp32": {"all": 0.0, "grid": 0.0}, "bf16": {"all": 0.0, "grid": 0.0}}
    accuracy = {p: {"all": [], **{k: [] for k in BUDGETS}} for p in seconds}
    for seed in range(args.seeds_all):
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            head = LayerAttention(precision=precision, device=args.device, random_state=seed).fit(X, y)
            seconds[precision]["all"] += time.perf_counter() - start
            accuracy[precision]["all"].append(head.score(Xt, yt))
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        heads = fit_many(LayerAttention(precision=precision, device=args.device), X, y,
                         [r for _, _, r in cells], [s for _, s, _ in cells])
        seconds[precision]["grid"] = time.perf_counter() - start
        for (k, _, _), head in zip(cells, heads):
            accuracy[precision][k].append(head.score(Xt, yt))
    print(f"TREC-6, layer-attention on {args.device} (CPU: {cpu_name()}); accuracy (%) mean over seeds")
    for part, label in (("all", f"all the data, {args.seeds_all} seeds"), ("grid", "4..64/class x 10 seeds")):
        t32, t16 = seconds["fp32"][part], seconds["bf16"][part]
        print(f"{label:<26} fp32 {t32:6.1f} s   bf16 {t16:6.1f} s   x{t32 / t16:4.2f}")
    for precision in ("fp32", "bf16"):
        row = "  ".join(f"{k}: {100 * np.mean(accuracy[precision][k]):5.2f}" for k in ("all", *BUDGETS))
        print(f"{precision}  {row}")


if __name__ == "__main__":
    main()
