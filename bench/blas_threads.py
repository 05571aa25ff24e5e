"""Logistic regression (LastLayerLogReg, the layer probes) with the default BLAS threads against one thread.

    python bench/blas_threads.py [--dataset banking77]

42 fits: each of the 7 layers × budgets 4 and 16 per class × 3 seeds, as a sweep's layer probe does, then one
fit on all the data; the same fits with BLAS left to its default and held to one thread, side by side.
"""
from __future__ import annotations

import argparse
import time

from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from common import load

from classify import sample_budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="banking77")
    args = ap.parse_args()
    X, y, Xt, yt = load(args.dataset)
    rows = [sample_budget(y, per_class=b, random_state=s, fallback="all") for b in (4, 16) for s in range(3)]
    grid = [(r, layer) for r in rows for layer in range(X.shape[1])]
    for label, work in (("42 probe fits", grid), ("all the data, last layer", [(slice(None), -1)])):
        times = {}
        for threads in (None, 1):  # None: BLAS's default (every core)
            with threadpool_limits(threads, user_api="blas"):
                start = time.perf_counter()
                for r, layer in work:
                    LogisticRegression(C=1.0, max_iter=1000).fit(X[r, layer], y[r])
                times[threads] = time.perf_counter() - start
        print(f"{args.dataset} {label:<26} default threads {times[None]:6.2f} s   one thread {times[1]:6.2f} s   "
              f"x {times[None] / times[1]:.1f}")


if __name__ == "__main__":
    main()
