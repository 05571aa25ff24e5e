"""Many L2-regularised multinomial logistic regressions at once: the per-layer cross-validation that decides a row
set's normalisation (plan.py, priors.cv_logliks), batched over row sets × layers × folds on the heads' device.

Each problem is scikit-learn's LogisticRegression(C) with its default solver: minimise the mean cross-entropy of
its training rows plus ||W||² / (2 C n), the intercept unpenalised (two classes: scikit-learn's one-vector
penalty). The problems of one group share a feature matrix and differ in which rows they train on (their folds),
so one matrix product per group serves every fold. Solved by L-BFGS (10 pairs, as scipy; a backtracking line
search per problem) in float32 until every problem's gradient is below `tol` in every coordinate, scikit-learn's
stopping rule (scipy's pgtol = 1e-4). Compared with scikit-learn on 4-64 labels per class of five datasets, 10
seeds each (bench/cv_check.py, docs/benchmarks.md): the same decisions, log-likelihoods within 4e-3 nats per row.
"""
from __future__ import annotations

import torch

HISTORY = 10  # L-BFGS correction pairs, scipy's default
ARMIJO = 1e-4  # sufficient decrease of the line search
MAX_ITER = 500  # L-BFGS iterations at most, as the heads' scikit-learn checks had (LogisticRegression(max_iter=500))
# cross_validated: from this many classes, where a step is bound by its matmuls, each fold trains on a copy of its
# own rows rather than on all rows with weights (25% fewer flops; docs/experiments.md has the measurements)
SPLIT_CLASSES = 64

# Inside, every array is class-major: weights theta (G, F, C, H + 1), each class's H weights then its intercept;
# logits (G, F, C, n), rows last. The products then come out of the BLAS in the orientation it runs fastest
# (few rows on the left: matmul.py), and the softmax runs over an axis before the rows', where torch's CPU kernel
# is vectorised along the rows (over a last axis of a few classes it runs a row at a time).


def _objective(theta: torch.Tensor, Z: torch.Tensor, codes: torch.Tensor, w: torch.Tensor, absent: torch.Tensor,
               reg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective (G, F) and its gradient (G, F, C, H + 1) of every problem at theta (G, F, C, H + 1): the last
    column of theta is the intercept. Z (G, n, H); codes (G, n) each row's class; w (G, F, n) training weights,
    each problem's summing to 1; absent (G, F, C) classes a problem never trains on, held at probability 0;
    reg (G, F) = 1 / (C n) (twice that for two classes) per problem.

    The (G, F, C, n) arrays are worked on in place, two new ones per call: with many classes each is several MB,
    and a fresh one would be mapped and faulted in page by page."""
    W, b = theta[..., :-1], theta[..., -1]
    logits = _logits(Z, W)  # (G, F, C, n), new
    logits += b[..., None]
    logp = logits.masked_fill_(absent[..., None], float("-inf")).log_softmax(-2)  # new
    target = codes[:, None, None, :].expand(-1, logp.shape[1], -1, -1)  # (G, F, 1, n) each row's class
    own = logp.gather(-2, target)  # (G, F, 1, n)
    nll = -own[..., 0, :]  # (G, F, n): inf on rows of an absent class, ...
    value = torch.where(w > 0, w * nll, 0).sum(-1) + 0.5 * reg * (W * W).sum((-2, -1))  # ... which have no weight
    residual = logp.exp_().scatter_add_(-2, target, own.new_full(own.shape, -1.0))  # p - onehot, in logp
    residual.mul_(w[:, :, None, :])  # (G, F, C, n)
    gW = _weights_gradient(Z, residual) + reg[..., None, None] * W
    return value, torch.cat([gW, residual.sum(-1)[..., None]], dim=-1)


def _logits(Z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Z (G, n, H), W (G, F, C, H) -> (G, F, C, n) every problem's (Z Wᵀ)ᵀ, one product per group over Z."""
    G, F, C, H = W.shape
    return torch.matmul(W.reshape(G, F * C, H), Z.mT).view(G, F, C, -1)


def _weights_gradient(Z: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Z (G, n, H), R (G, F, C, n) -> (G, F, C, H) every problem's (Zᵀ Rᵀ)ᵀ, one product per group over Z."""
    G, F, C, n = R.shape
    return torch.matmul(R.reshape(G, F * C, n), Z).view(G, F, C, -1)


def fit_logregs(Z: torch.Tensor, codes: torch.Tensor, w: torch.Tensor, n_classes: int, C: float = 1.0,
                tol: float = 1e-4, max_iter: int = MAX_ITER) -> torch.Tensor:
    """(G, F, H + 1, C) weights and intercepts (last row) of G × F logistic regressions.

    Z: (G, n, H) features; codes: (G, n) class indices below n_classes; w: (G, F, n) 1 where problem (g, f)
    trains on row n, else 0 (padding rows and held-out folds). A problem with no training rows stays at zero.
    Classes a problem has no training row of are left out of it (probability 0), as scikit-learn only sees the
    classes present. A problem stops when its gradient is below `tol` in every coordinate, or when its line
    search finds no decrease (the optimum, to Z's precision); groups whose problems have all stopped leave the
    batch, so the slowest problem does not keep the others computing. Computes in Z's dtype and on its device.
    """
    return _fit(Z, codes, w, n_classes, C, tol, max_iter).transpose(-2, -1)


def _fit(Z: torch.Tensor, codes: torch.Tensor, w: torch.Tensor, n_classes: int, C: float, tol: float,
         max_iter: int) -> torch.Tensor:
    """fit_logregs, class-major: (G, F, C, H + 1)."""
    G, n, H = Z.shape
    F = w.shape[1]
    onehot = torch.nn.functional.one_hot(codes, n_classes).to(Z.dtype)  # (G, n, C)
    absent = torch.matmul((w > 0).to(Z.dtype), onehot) == 0  # (G, F, C) classes a problem never sees
    rows = w.sum(-1)  # (G, F)
    # scikit-learn fits two classes with one coefficient vector w, which is W's columns ±w/2 at their optimum:
    # ||W||² = ||w||² / 2, so its penalty on W is twice the multinomial one
    binary = (~absent).sum(-1) == 2  # (G, F)
    reg = torch.where(binary, 2.0, 1.0) / (C * rows.clamp(min=1))
    w = w / rows.clamp(min=1)[..., None]
    theta = Z.new_zeros(G, F, n_classes, H + 1)
    value, g = _objective(theta, Z, codes, w, absent, reg)
    # per group (dim 0): data, L-BFGS's correction pairs (newest at slot pairs % HISTORY) and state
    st = {"Z": Z, "codes": codes, "w": w, "absent": absent, "reg": reg, "theta": theta,
          "value": value, "g": g,
          "steps": Z.new_zeros(G, HISTORY, F, n_classes, H + 1), "rho": Z.new_zeros(G, HISTORY, F),
          "gamma": Z.new_ones(G, F), "stopped": rows == 0, "group": torch.arange(G, device=Z.device)}
    st["changes"] = torch.zeros_like(st["steps"])
    out = torch.zeros_like(theta)
    pairs = 0
    for _ in range(max_iter):
        st["stopped"] |= st["g"].abs().amax((-2, -1)) <= tol
        finished = st["stopped"].all(1)  # (G',)
        if bool(finished.all()):
            break
        if 4 * int(finished.sum()) >= len(finished):  # a quarter of the groups done: drop them from the batch
            out[st["group"][finished]] = st["theta"][finished]
            st = {key: value[~finished] for key, value in st.items()}
        theta, g, stopped = st["theta"], st["g"], st["stopped"]
        # two-loop recursion, newest pair first; a pair with rho 0 (failed curvature) is skipped per problem
        q = g.clone()
        alphas = []
        for i in range(pairs - 1, max(pairs - HISTORY, 0) - 1, -1):
            j = i % HISTORY
            a = st["rho"][:, j] * (st["steps"][:, j] * q).sum((-2, -1))
            q -= a[..., None, None] * st["changes"][:, j]
            alphas.append((j, a))
        r = st["gamma"][..., None, None] * q
        for j, a in reversed(alphas):
            beta = st["rho"][:, j] * (st["changes"][:, j] * r).sum((-2, -1))
            r += st["steps"][:, j] * (a - beta)[..., None, None]
        direction = -r.masked_fill(stopped[..., None, None], 0)
        if pairs == 0:  # no curvature known yet: a first step of unit length
            length = direction.flatten(-2).norm(dim=-1).clamp(min=1e-12)
            direction = direction / length.clamp(min=1)[..., None, None]
        slope = (g * direction).sum((-2, -1))  # (G', F), < 0 for the problems still moving
        t = torch.ones_like(slope)
        for _ in range(20):  # backtrack each problem on its own until it decreases enough
            trial = theta + t[..., None, None] * direction
            value, new_g = _objective(trial, st["Z"], st["codes"], st["w"], st["absent"], st["reg"])
            ok = (value <= st["value"] + ARMIJO * t * slope) | stopped
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        failed = ~ok  # no decrease along the direction at Z's precision: as close as it gets
        trial = torch.where(failed[..., None, None], theta, trial)
        value = torch.where(failed, st["value"], value)
        new_g = torch.where(failed[..., None, None], g, new_g)
        flat = st["value"] - value <= 4 * torch.finfo(Z.dtype).eps * value.abs().clamp(min=1)  # scipy's ftol
        step, change = trial - theta, new_g - g
        curvature = (step * change).sum((-2, -1))
        good = (curvature > 1e-12) & ~stopped & ~failed
        j = pairs % HISTORY
        st["steps"][:, j], st["changes"][:, j] = step, change
        st["rho"][:, j] = torch.where(good, 1.0 / curvature.clamp(min=1e-30), torch.zeros_like(curvature))
        st["gamma"] = torch.where(good, curvature / (change * change).sum((-2, -1)).clamp(min=1e-30), st["gamma"])
        st["stopped"] = stopped | failed | flat
        st["theta"], st["value"], st["g"] = trial, value, new_g
        pairs += 1
    out[st["group"]] = st["theta"]
    return out


def cross_validated(Z: torch.Tensor, codes: torch.Tensor, folds: torch.Tensor, n_classes: int,
                    C: float = 1.0, tol: float = 1e-4) -> torch.Tensor:
    """(G,) k-fold cross-validated log-likelihood of G logistic regressions: each row's log-probability of its own
    class (floored at log 1e-9, as priors.py always has) under the regression trained without its fold, summed.

    Z: (G, n, H) features; codes: (G, n) class indices; folds: (G, n) each row's fold, 0..k-1 (k may differ
    between groups), -1 for padding rows.
    """
    F = int(folds.max()) + 1
    held_out = (folds[:, None, :] == torch.arange(F, device=folds.device)[None, :, None]).to(Z.dtype)  # (G, F, n)
    train = (folds[:, None, :] >= 0).to(Z.dtype) - held_out
    train = train * (held_out.sum(-1, keepdim=True) > 0)  # a fold no row of the group is in: no problem
    if n_classes >= SPLIT_CLASSES:  # each fold its own group of its training rows only (padded)
        G, n, H = Z.shape
        order = torch.argsort(train, dim=-1, descending=True, stable=True)  # (G, F, n): training rows first
        n_train = int(train.sum(-1).max())
        keep = order[..., :n_train]  # (G, F, n_train)
        split = torch.gather(Z[:, None].expand(-1, F, -1, -1), 2, keep[..., None].expand(-1, -1, -1, H))
        theta = _fit(split.flatten(0, 1), torch.gather(codes[:, None].expand(-1, F, -1), 2, keep).flatten(0, 1),
                     torch.gather(train, 2, keep).flatten(0, 1)[:, None], n_classes, C, tol, MAX_ITER)
        theta = theta.reshape(G, F, n_classes, H + 1)
    else:
        theta = _fit(Z, codes, train, n_classes, C, tol, MAX_ITER)  # (G, F, C, H + 1)
    present = (torch.nn.functional.one_hot(codes, n_classes) * (folds >= 0)[..., None]).amax(1).bool()  # (G, C)
    logits = _logits(Z, theta[..., :-1]) + theta[..., -1, None]  # (G, F, C, n)
    logp = logits.masked_fill(~present[:, None, :, None], float("-inf")).log_softmax(-2)
    own = logp.gather(-2, codes[:, None, None, :].expand(-1, F, 1, -1))[..., 0, :]  # (G, F, n)
    own = torch.logaddexp(own, torch.full_like(own, -20.723265836946411))  # log(p + 1e-9)
    return (held_out * own).sum((1, 2))
