"""Many independent heads trained as one model: parameters carry leading axes (S, M).

S row sets (budgets, seeds or whole fits) × M ensemble members. The members of a set share its gathered,
normalised features x (S, n, L, H), so memory grows with S and not S×M. One forward and one backward pass
serve every head. Heads never share a gradient: the summed loss separates by head and Adam's updates are
element-wise, so a head trained in a stack equals the same head trained alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


# The layer selector (mix weights, attention) is held 100x more tightly than the classifier. Measured on
# TREC-6: a free selector picks whichever layer fits a few labels best and loses up to 6 points at
# 4 labels per class; held, it stays near uniform with few labels and moves when the evidence is there.
SELECTOR_L2 = 100.0


class ScalarMixStack(torch.nn.Module):
    """ELMo's scalar mix then a linear classifier, for S×M heads.

    z = γ · Σ_l softmax(w)_l · x_l;  logits = dropout(z) W + b
    """

    def __init__(self, S: int, M: int, L: int, H: int, C: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("p0", torch.zeros(S, M, L))  # the selector's prior; the penalty pulls w to it
        self.w = torch.nn.Parameter(torch.zeros(S, M, L))  # uniform mix at the start
        self.gamma = torch.nn.Parameter(torch.ones(S, M))
        self.W = torch.nn.Parameter(torch.randn(S, M, H, C, generator=generator) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(S, M, C))

    def layer_weights(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, n, L, H) -> (S, M, n, L) weights over layers (the same for every document)."""
        S, n = x.shape[:2]
        return self.w.softmax(-1)[:, :, None, :].expand(S, -1, n, -1)

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (S, n, L, H), fastest in layer_major layout -> logits (S, M, n, C)"""
        S, n, L, H = x.shape
        mix = torch.matmul(self.w.softmax(-1), x.transpose(1, 2).reshape(S, L, n * H))  # (S, M, n*H)
        z = self.gamma[..., None, None] * mix.view(S, -1, n, H)  # (S, M, n, H)
        if dropout > 0:
            z = z * (torch.rand(z.shape, generator=generator, device=z.device) >= dropout) / (1 - dropout)
        return torch.einsum("smnh,smhc->smnc", z, self.W) + self.b[:, :, None, :]

    def penalty(self) -> torch.Tensor:
        """(S, M) squared L2 norm of the classifier weights, plus the mixing weights held tightly."""
        return (self.W ** 2).sum((-2, -1)) + SELECTOR_L2 * ((self.w - self.p0) ** 2).sum(-1)


class LayerAttentionStack(torch.nn.Module):
    """FineText-style selector: per-document attention over layers, each layer with its own classifier.

    s_l = x_l · u_l / √H + p_l;  α = softmax_l(s);  logits = Σ_l α_l (x_l W_l) + b
    u and p start at 0, so every head starts as the average of per-layer linear classifiers (logistic
    regression on all layers at once) and learns, per document, which layers to trust.
    """

    def __init__(self, S: int, M: int, L: int, H: int, C: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("p0", torch.zeros(S, M, L))  # the selector's prior; the penalty pulls w to it
        self.w = torch.nn.Parameter(torch.zeros(S, M, L))  # p: per-layer prior score
        self.u = torch.nn.Parameter(torch.zeros(S, M, L, H))
        self.W = torch.nn.Parameter(torch.randn(S, M, L, H, C, generator=generator) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(S, M, C))
        self.scale = 1.0 / math.sqrt(H)

    def _scores(self, attention: torch.Tensor) -> torch.Tensor:
        """attention (S, L, n, M) = x_l · u_l -> (S, M, n, L) scores s = x_l·u_l/√H + p_l"""
        return attention.permute(0, 3, 2, 1) * self.scale + self.w[:, :, None, :]

    def layer_weights(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, n, L, H) -> (S, M, n, L) per-document weights over layers."""
        return self._scores(torch.matmul(x.transpose(1, 2), self.u.permute(0, 2, 3, 1))).softmax(-1)

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (S, n, L, H), fastest in layer_major layout -> logits (S, M, n, C)"""
        S, n, L, H = x.shape
        M, C = self.W.shape[1], self.W.shape[-1]
        # one matmul per (set, layer) reads x once for every member's classifier and attention: (n, H) @ (H, M*C + M)
        w = torch.cat([self.W.permute(0, 2, 3, 1, 4).reshape(S, L, H, M * C), self.u.permute(0, 2, 3, 1)], -1)
        out = torch.matmul(x.transpose(1, 2), w)  # (S, L, n, M*C + M)
        per_layer = out[..., :M * C].unflatten(-1, (M, C)).permute(0, 3, 2, 1, 4)  # (S, M, n, L, C)
        if dropout > 0:  # drop whole layers' votes
            keep = torch.rand(per_layer.shape[:-1], generator=generator, device=x.device) >= dropout
            per_layer = per_layer * keep[..., None] / (1 - dropout)
        alpha = self._scores(out[..., M * C:]).softmax(-1)  # (S, M, n, L)
        return torch.einsum("smnlc,smnl->smnc", per_layer, alpha) + self.b[:, :, None, :]

    def penalty(self) -> torch.Tensor:
        return (self.W ** 2).sum((-3, -2, -1)) + SELECTOR_L2 * ((self.u ** 2).sum((-2, -1)) + ((self.w - self.p0) ** 2).sum(-1))


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head of a stack."""

    lr: float = 1e-2
    C: float = 1.0  # inverse L2 strength, as scikit-learn's LogisticRegression: it scales with 1/n
    dropout: float = 0.0  # on the mixed vector (ScalarMix) or on whole layers' votes (LayerAttention)
    max_epochs: int = 200
    patience: int = 20  # epochs without a better validation loss before a head stops improving
    batch_rows: int = 4096  # full batch up to this many rows, minibatches of this size beyond


def layer_major(x: torch.Tensor) -> torch.Tensor:
    """x (S, n, L, H), the same values and shape laid out with each (set, layer) block of n rows contiguous:
    the layout in which the stacks' matmuls read x without copying it (a no-op when x already has it)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (S, M, n, C), y (S, n) -> (S, M, n) cross-entropy."""
    S, M, n, C = logits.shape
    target = y[:, None, :].expand(S, M, n).reshape(-1)
    return F.cross_entropy(logits.reshape(-1, C), target, reduction="none").view(S, M, n)


def train_stack(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w_train: torch.Tensor,
                w_val: torch.Tensor | None, config: TrainConfig, generator: torch.Generator) -> np.ndarray:
    """Adam on all heads at once; keeps each head's parameters from its best validation epoch.

    x: (S, n, L, H) normalised features; y: (S, n) class indices; w_train, w_val: (S, M, n) row weights
    (0 for padding and for the other split). Without w_val every head trains for max_epochs; with it, a set
    leaves the stack once all its members have stopped improving, so the others train on without it. Everything,
    the module and `generator` included, lives on x's device.
    Returns (S, M) the epoch each head's kept parameters come from.
    """
    S, n = y.shape
    M = w_train.shape[1]
    x = layer_major(x)
    names = list(module.named_parameters(recurse=False))  # a stack's parameters and buffers are its own
    buffers = dict(module.named_buffers(recurse=False))  # the full stack's, put back at the end
    opt = torch.optim.Adam([p for _, p in names], lr=config.lr)
    device = x.device
    best_epoch = torch.full((S, M), config.max_epochs - 1, device=device)
    # scikit-learn's C: 0.5·|W|²/C + Σ CE  ==  mean CE + |W|²/(2·C·n) per head, n its training weight
    l2 = 1.0 / (2.0 * config.C * w_train.sum(-1).clamp(min=1.0))  # (S, M)
    if w_val is not None:
        kept = [p.detach().clone() for _, p in names]  # every head's parameters from its best epoch, full stack
        best = torch.full((S, M), float("inf"), device=device)
        since = torch.zeros(S, M, dtype=torch.long, device=device)
        active = torch.arange(S, device=device)  # the sets still training: their rows in the full stack
    for epoch in range(config.max_epochs):
        batches = [(x, y, w_train)]  # full batch: no copy
        if n > config.batch_rows:
            order = torch.randperm(n, generator=generator, device=device).split(config.batch_rows)
            batches = ((x.transpose(1, 2).index_select(2, rows).transpose(1, 2), y[:, rows], w_train[:, :, rows])
                       for rows in order)
        for xb, yb, wb in batches:
            opt.zero_grad(set_to_none=True)
            logits = module(xb, config.dropout, generator)  # (S, M, b, C)
            loss = (_ce(logits, yb) * wb).sum(-1) / wb.sum(-1).clamp(min=1e-12)  # (S, M)
            (loss + l2 * module.penalty()).sum().backward()
            opt.step()
        if w_val is None:
            continue
        with torch.no_grad():
            val = validation_loss(module, x, y, w_val, config.batch_rows)  # (S, M)
            better = val < best - 1e-5
            best = torch.where(better, val, best)
            best_epoch[active] = torch.where(better, epoch, best_epoch[active])
            since = torch.where(better, torch.zeros_like(since), since + 1)
            if better.any():
                sets, members = better.nonzero(as_tuple=True)
                for (name, _), k in zip(names, kept):
                    k[active[sets], members] = getattr(module, name).detach()[sets, members]
            stopped = (since >= config.patience).all(-1)  # (S,) every member of the set has stopped
            if bool(stopped.all()):
                break
            if bool(stopped.any()):  # the rest train on without the stopped sets' features and parameters
                keep = (~stopped).nonzero().squeeze(1)
                active, x, y, w_train, w_val, l2, best, since = (
                    t[keep] for t in (active, x, y, w_train, w_val, l2, best, since))
                _keep_sets(module, opt, keep)
    if w_val is not None:  # the full stack again, each head with its kept parameters
        for (name, _), k in zip(names, kept):
            setattr(module, name, torch.nn.Parameter(k))
        for name, buffer in buffers.items():
            setattr(module, name, buffer)
    return best_epoch.cpu().numpy()


def _keep_sets(module: torch.nn.Module, opt: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    """Shrink a stack to the sets `keep` (indices along the leading axis): parameters, buffers, Adam's moments."""
    group = opt.param_groups[0]["params"]
    for name, old in list(module.named_parameters(recurse=False)):
        new = torch.nn.Parameter(old.detach()[keep])
        setattr(module, name, new)
        group[next(i for i, p in enumerate(group) if p is old)] = new
        opt.state[new] = {k: v[keep] if torch.is_tensor(v) and v.dim() > 0 else v
                          for k, v in opt.state.pop(old, {}).items()}
    for name, buffer in list(module.named_buffers(recurse=False)):
        setattr(module, name, buffer[keep])


def validation_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    batch_rows: int) -> torch.Tensor:
    """(S, M) weighted mean cross-entropy without dropout."""
    total = torch.zeros(w.shape[:2], device=w.device)
    for start in range(0, y.shape[1], batch_rows):
        sl = slice(start, start + batch_rows)
        total += (_ce(module(x[:, sl]), y[:, sl]) * w[:, :, sl]).sum(-1)
    return total / w.sum(-1).clamp(min=1e-12)
