"""Logistic regression (LastLayerLogReg, the layer probes) with the default BLAS threads against one thread,
and one thread per fit with the fits spread over the cores by joblib (threads), as a sweep's report does.

    python bench/blas_threads.py [--dataset banking77]

42 fits: each of the 7 layers × budgets 4 and 16 per class × 3 seeds, as a sweep's layer probe does, then one
fit on all the data; the same fits with BLAS left to its default and held to one thread, side by side.
"""
from __future__ import annotations

import argparse
import time

from joblib import Parallel, delayed, effective_n_jobs
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from common import load

from finetext.classify import sample_budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="banking77")
    args = ap.parse_args()
    X, y, Xt, yt = load(args.dataset)
    rows = [sample_budget(y, per_class=b, random_state=s, fallback="all") for b in (4, 16) for s in range(3)]
    grid = [(r, layer) for r in rows for layer in range(X.shape[1])]

    def fit(r, layer):
        return LogisticRegression(C=1.0, max_iter=1000).fit(X[r, layer], y[r])

    def timed(threads, run) -> float:  # threads None: BLAS's default (every core)
        with threadpool_limits(threads, user_api="blas"):
            start = time.perf_counter()
            run()
            return time.perf_counter() - start

    for label, work in (("42 probe fits", grid), ("all the data, last layer", [(slice(None), -1)])):
        default, one = (timed(t, lambda: [fit(r, layer) for r, layer in work]) for t in (None, 1))
        print(f"{args.dataset} {label:<26} default threads {default:6.2f} s   one thread {one:6.2f} s   "
              f"x {default / one:.1f}")
        if label == "42 probe fits":
            pooled = timed(1, lambda: Parallel(n_jobs=-1, prefer="threads")(delayed(fit)(r, k) for r, k in grid))
            print(f"{args.dataset} {label:<26} one thread per fit, joblib threads over {effective_n_jobs(-1)} cores "
                  f"{pooled:6.2f} s   x {one / pooled:.1f} over one thread in sequence")


if __name__ == "__main__":
    main()
