"""Multi-task heads on cached features: one layer selector shared by several tasks, one classifier per task.

Every task's cache must come from the same model (same layers and width). Each task keeps its own
standardisation and per-layer classifiers; the attention over layers (u, p of LayerAttentionStack) is one
set of parameters that every task's loss moves. Each fitted task comes back as an ordinary LayerAttention.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from finetext.classify.features import check_features, layer_stats
from finetext.classify.heads import LayerAttention
from finetext.classify.priors import probe_prior
from finetext.classify.stack import LayerAttentionStack

SHARED = ("u", "w")  # the selector's parameters


def fit_shared_selector(data: Mapping[str, tuple[object, object]], *, lr: float = 3e-2, C: float = 0.5,
                        epochs: int = 100, batch_rows: int = 4096, layer_prior: str = "probe",
                        random_state: int = 0) -> dict[str, LayerAttention]:
    """Fit one LayerAttention per task with a shared selector, jointly. data: task -> (X (n, L, H), y).

    The objective is the sum over tasks of each task's single-task objective (mean cross-entropy plus
    scikit-learn-scaled L2, as LayerAttention), so a task alone with layer_prior="uniform" trains exactly as a
    one-member LayerAttention that standardises its features. layer_prior: "probe" (the mean of the tasks' probe
    priors) or "uniform".
    """
    if layer_prior not in ("probe", "uniform"):
        raise ValueError(f"layer_prior: expected 'probe' or 'uniform', got {layer_prior!r}.")
    if len(data) < 1:
        raise ValueError("fit_shared_selector: give at least one task.")
    names = list(data)
    prepared = {}
    for name in names:
        X = check_features(data[name][0])
        y = np.asarray(data[name][1])
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"task {name}: expected {len(X)} labels as a 1-D array, got shape {y.shape}.")
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"task {name}: only one class ({classes[0]!r}); a classifier needs at least two.")
        prepared[name] = (X, classes, codes)
    shapes = {name: X.shape[1:] for name, (X, _, _) in prepared.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"tasks must share one model's features (layers, hidden); got {shapes}. Extract every "
                         "task with the same --model.")
    L, H = next(iter(shapes.values()))
    prior = np.zeros(L, np.float32)
    if layer_prior == "probe":
        prior = np.mean([probe_prior(X, codes, len(classes)) for X, classes, codes in prepared.values()], axis=0)
    modules, tensors = {}, {}
    for i, (name, (X, classes, codes)) in enumerate(prepared.items()):
        mean, std = layer_stats(X)
        module = LayerAttentionStack(1, 1, L, H, len(classes), torch.Generator().manual_seed(random_state + i))
        with torch.no_grad():
            module.p0[:] = torch.from_numpy(prior)
            module.w.copy_(module.p0)
        if i:
            for p in SHARED:
                setattr(module, p, getattr(modules[names[0]], p))
        modules[name] = module
        x = torch.from_numpy((X - mean) / std)  # (n, L, H)
        tensors[name] = (x, torch.from_numpy(codes), mean, std, 1.0 / (2.0 * C * len(X)))
    params = list({id(p): p for m in modules.values() for p in m.parameters()}.values())
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(random_state)
    chunks = {n: max(1, -(-len(t[1]) // batch_rows)) for n, t in tensors.items()}
    orders = {n: torch.arange(len(t[1])) for n, t in tensors.items()}
    for epoch in range(epochs):
        for n, t in tensors.items():
            if chunks[n] > 1:
                orders[n] = torch.randperm(len(t[1]), generator=gen)
        for step in range(max(chunks.values())):  # every task contributes to every step
            opt.zero_grad(set_to_none=True)
            total = torch.zeros(())
            for name, (x, y, _, _, l2) in tensors.items():
                rows = orders[name][(step % chunks[name]) * batch_rows:][:batch_rows]
                logits = modules[name](x[rows][None])[0, 0]  # (b, C)
                total = total + F.cross_entropy(logits, y[rows]) + l2 * modules[name].penalty().sum()
            total.backward()
            opt.step()
    heads = {}
    for name, module in modules.items():
        x, _, mean, std, _ = tensors[name]
        X, classes, _ = prepared[name]
        with torch.no_grad():
            weights = module.layer_weights(x[None]).mean((0, 1, 2)).numpy()  # (L,)
        state = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
        state |= {"mean": mean, "std": std, "best_epoch": np.full((1, 1), epochs - 1, np.int64)}
        head = LayerAttention(n_members=1, C=C, random_state=random_state)
        head.import_state(classes, L, H, state, {"layer_weights": weights.tolist(), "normalization": "standard"})
        heads[name] = head
    return heads
