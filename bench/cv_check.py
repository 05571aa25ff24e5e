"""normalize="cv"'s check of the last layer, batched in torch (classify/logreg.py) against scikit-learn's.

For every budget, 10 seeds of labelled rows; per row set and layer, the 4-fold cross-validated log-likelihood
of a logistic regression on the "layer"-normalised features, computed
  sklearn:  one LogisticRegression per set, layer and fold (what the heads did before this release);
  torch:    every set, layer and fold at once (priors.cv_logliks, on --device).
Prints both wall times, their ratio, the largest difference per row, and whether the two make the same
decision (another layer beats the last by more than LAST_LAYER_GAP nats per row) for every set.

    python bench/cv_check.py [trec bbc sst2 banking77 | path/to/train-cache.h5] [--budgets 4,8,16,32,64]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import load  # noqa: E402  (sets sys.path)
from finetext.classify import sample_budget  # noqa: E402
from finetext.classify.features import normalised  # noqa: E402
from finetext.classify.priors import LAST_LAYER_GAP, cv_folds, cv_logliks  # noqa: E402


def sklearn_loglik(Z: np.ndarray, codes: np.ndarray, seed: int) -> np.ndarray:
    """(L,) the scikit-learn computation the heads used before: cross_val_predict per layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    folds = StratifiedKFold(cv_folds(codes), shuffle=True, random_state=seed)
    with threadpool_limits(1, user_api="blas"):  # many small fits: one BLAS thread is faster
        return np.array([np.log(cross_val_predict(LogisticRegression(max_iter=500), Z[:, layer], codes, cv=folds,
                                                  method="predict_proba")[np.arange(len(codes)), codes] + 1e-9).sum()
                         for layer in range(Z.shape[1])])


def features(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Training features (mean pooling) and labels of a shared benchmark set, or of a cache file."""
    if name.endswith(".h5"):
        from finetext.extract import open_cache

        with open_cache(name) as cache:
            return cache.features("mean"), cache.label_strings()
    X, y, _, _ = load(name)
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=["trec", "bbc", "sst2"])
    ap.add_argument("--budgets", default="4,8,16,32,64")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for name in args.datasets:
        X, y = features(name)
        codes = np.unique(y, return_inverse=True)[1]
        times, same = np.zeros(2), []
        for k in map(int, args.budgets.split(",")):
            sets = [sample_budget(y, per_class=k, random_state=s, fallback="all") for s in range(args.seeds)]
            seeds = list(range(args.seeds))
            start = time.perf_counter()
            ref = np.stack([sklearn_loglik(normalised(X[r], "layer"), np.unique(codes[r], return_inverse=True)[1], s)
                            for s, r in zip(seeds, sets)])
            t_ref = time.perf_counter() - start
            start = time.perf_counter()
            ours = np.stack(cv_logliks(X, codes, sets, seeds, "layer", args.device))
            t_ours = time.perf_counter() - start
            n = np.array([len(r) for r in sets])
            decide = [(L.max(1) - L[:, -1]) / n > LAST_LAYER_GAP for L in (ref, ours)]
            same += list(decide[0] == decide[1])
            times += (t_ref, t_ours)
            print(f"{Path(name).stem:<12} {k:>3}/class  sklearn {t_ref:6.2f} s  torch {t_ours:6.2f} s  "
                  f"x{t_ref / t_ours:4.1f}  largest difference {np.abs(ref - ours).max(initial=0) / n.min():.1e} "
                  f"nats/row  same decision {int((decide[0] == decide[1]).sum())}/{len(sets)}", flush=True)
        print(f"{Path(name).stem:<12} all        sklearn {times[0]:6.2f} s  torch {times[1]:6.2f} s  "
              f"x{times[0] / times[1]:4.1f}  same decision {sum(same)}/{len(same)}", flush=True)


if __name__ == "__main__":
    main()
