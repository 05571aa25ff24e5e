"""Many heads at once versus one at a time, on cached MiniLM features of TREC-6.

A grid of 5 budgets (4..64 labels per class) x 10 seeds x 4 heads = 200 fits, trained
  batched:     `fit_many` per head (vectorised heads share one forward/backward pass per stack);
  sequential:  one `fit` per cell.
Prints both wall times, the ratio, and checks the two give the same test accuracy. `--device cuda` trains the
vectorised heads on a GPU, both ways (the last-layer logistic regression stays on the CPU). A fit that does not
validate first checks which normalisation its rows call for (classify/plan.py: 7 x k logistic regressions, batched
with the fit's other sets on its device); "layer-attention-ensemble" validates from 4 labels per class, timing
the 5-member ensemble on the same cells.

    python bench/heads_speed.py [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import cpu_name, load  # noqa: E402  (sets sys.path)
import finetext.classify.plan as plan  # noqa: E402
from finetext.classify import LastLayerLogReg, LayerAttention, ScalarMix, fit_many, sample_budget  # noqa: E402
from finetext.classify.priors import clear_cv_memo  # noqa: E402

BUDGETS = (4, 8, 16, 32, 64)
SEEDS = range(10)
HEADS = {
    "last-layer": LastLayerLogReg(),
    "scalar-mix": ScalarMix(),
    "layer-attention": LayerAttention(),
    "layer-attention-ensemble": LayerAttention(),  # 5 members, each validated on a fold (ENSEMBLE_FROM)
}
ENSEMBLE_FROM = 4  # labels per class from which "layer-attention-ensemble" validates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = args.device
    X, y, Xt, yt = load("trec")
    cells = [(k, s, sample_budget(y, per_class=k, random_state=s)) for k in BUDGETS for s in SEEDS]
    print(f"TREC-6 train {X.shape}, test {Xt.shape}; {len(cells)} cells x {len(HEADS)} heads = "
          f"{len(cells) * len(HEADS)} fits; vectorised heads on {device}; "
          f"CPU: {cpu_name()}")
    if device != "cpu":  # CUDA context and kernels load on the first fit: not part of either timing
        fit_many(LayerAttention(device=device), X, y, [cells[0][2]])
    # each way computes its own checks, which the heads then share (cv_logliks remembers them), as in a sweep
    heads = {name: head.set_params(device=device) if "device" in head.get_params() else head
             for name, head in HEADS.items()}
    default_from = plan.MIN_VAL_PER_CLASS
    times: dict[str, dict[str, float]] = {"batched": {}, "alone": {}}
    fitted: dict[str, dict[str, list]] = {"batched": {}, "alone": {}}
    for way in times:
        clear_cv_memo()
        for name, head in heads.items():
            plan.MIN_VAL_PER_CLASS = ENSEMBLE_FROM if name == "layer-attention-ensemble" else default_from
            start = time.perf_counter()
            if way == "batched":
                models = fit_many(head, X, y, [r for _, _, r in cells], [s for _, s, _ in cells])
            else:
                models = [head.__class__(**{**head.get_params(), "random_state": s}).fit(X[r], y[r])
                          for _, s, r in cells]
            times[way][name], fitted[way][name] = time.perf_counter() - start, models
    for name in heads:
        t_b, t_s = times["batched"][name], times["alone"][name]
        acc_b, acc_s = (np.mean([m.score(Xt, yt) for m in fitted[way][name]]) for way in ("batched", "alone"))
        print(f"{name:<26} batched {t_b:6.1f} s   one at a time {t_s:6.1f} s   x{t_s / t_b:5.1f}   "
              f"mean accuracy {100 * acc_b:.2f} vs {100 * acc_s:.2f}")
    total_b, total_s = sum(times["batched"].values()), sum(times["alone"].values())
    print(f"{'all 200 fits':<26} batched {total_b:6.1f} s   one at a time {total_s:6.1f} s   x{total_s / total_b:5.1f}"
          "   (targets: batched <= 30 s, >= 10x)")


if __name__ == "__main__":
    main()
