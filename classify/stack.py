"""Many independent heads trained as one model: parameters carry leading axes (S, M).

S row sets (budgets, seeds or whole fits) × M ensemble members. The members of a set share its gathered,
normalised features x (S, n, L, H), so memory grows with S and not S×M. One forward and one backward pass
serve every head. Heads never share a gradient: the summed loss separates by head and Adam's updates are
element-wise, so a head trained in a stack equals the same head trained alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finetext.classify.matmul import times_narrow


# The layer selector (mix weights, attention) is held 100x more tightly than the classifier. Measured on
# TREC-6: a free selector picks whichever layer fits a few labels best and loses up to 6 points at
# 4 labels per class; held, it stays near uniform with few labels and moves when the evidence is there.
SELECTOR_L2 = 100.0
# ScalarMix's members project every layer before mixing up to this many members × classes: each layer's product
# widens with them, while mixing first reads the features once per member (the crossover measured on 2 CPU cores
# lies between 40 and 50 classes of 5 members: docs/benchmarks.md, "Scalar-mix ensembles")
PROJECT_FIRST_COLUMNS = 200


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
        M, C = self.W.shape[1], self.W.shape[-1]
        if 1 < M and M * C <= PROJECT_FIRST_COLUMNS and dropout == 0:  # several members: see _project_then_mix
            return self._project_then_mix(x)
        S, n, L, H = x.shape
        mix = torch.matmul(self.w.softmax(-1), x.transpose(1, 2).reshape(S, L, n * H))  # (S, M, n*H)
        z = self.gamma[..., None, None] * mix.view(S, -1, n, H)  # (S, M, n, H)
        if dropout > 0:
            z = z * (torch.rand(z.shape, generator=generator, device=z.device) >= dropout) / (1 - dropout)
        return times_narrow(z, self.W) + self.b[:, :, None, :]  # (S, M, n, C)

    def _project_then_mix(self, x: torch.Tensor) -> torch.Tensor:
        """forward for several members, without dropout: (γ Σ_l a_l x_l) W = γ Σ_l a_l (x_l W), one product per
        layer for every member's classifier, so x is read once per pass instead of mixed once per member. One
        member keeps the mix first, which is as fast for large sets and faster for small ones; so do members ×
        classes beyond PROJECT_FIRST_COLUMNS. x (S, n, L, H) -> (S, M, n, C)"""
        S, n, L, H = x.shape
        M, C = self.W.shape[1], self.W.shape[-1]
        w = self.W.permute(0, 2, 1, 3).reshape(S, 1, H, M * C).expand(-1, L, -1, -1)  # (S, L, H, M*C)
        per_layer = times_narrow(x.transpose(1, 2), w).unflatten(-1, (M, C))  # (S, L, n, M, C)
        a = self.gamma[..., None] * self.w.softmax(-1)  # (S, M, L)
        return torch.einsum("slnmc,sml->smnc", per_layer, a) + self.b[:, :, None, :]

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
        return self._scores(times_narrow(x.transpose(1, 2), self.u.permute(0, 2, 3, 1))).softmax(-1)

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (S, n, L, H), fastest in layer_major layout -> logits (S, M, n, C)"""
        S, n, L, H = x.shape
        M, C = self.W.shape[1], self.W.shape[-1]
        # one matmul per (set, layer) reads x once for every member's classifier and attention: (n, H) @ (H, M*C + M)
        w = torch.cat([self.W.permute(0, 2, 3, 1, 4).reshape(S, L, H, M * C), self.u.permute(0, 2, 3, 1)], -1)
        out = times_narrow(x.transpose(1, 2), w)  # (S, L, n, M*C + M)
        per_layer = out[..., :M * C].unflatten(-1, (M, C)).permute(0, 3, 2, 1, 4)  # (S, M, n, L, C)
        if dropout > 0:  # drop whole layers' votes
            keep = torch.rand(per_layer.shape[:-1], generator=generator, device=x.device) >= dropout
            per_layer = per_layer * keep[..., None] / (1 - dropout)
        alpha = self._scores(out[..., M * C:]).softmax(-1)  # (S, M, n, L)
        return torch.einsum("smnlc,smnl->smnc", per_layer, alpha) + self.b[:, :, None, :]

    def penalty(self) -> torch.Tensor:
        selector = (self.u ** 2).sum((-2, -1)) + ((self.w - self.p0) ** 2).sum(-1)
        return (self.W ** 2).sum((-3, -2, -1)) + SELECTOR_L2 * selector


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head of a stack."""

    lr: float = 1e-2
    C: float = 1.0  # inverse L2 strength, as scikit-learn's LogisticRegression: it scales with 1/n
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


def _mean_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """logits (S, M, n, C), y (S, n), row weights w (S, M, n) -> (S, M) weighted mean cross-entropy."""
    return (_ce(logits, y) * w).sum(-1) / w.sum(-1).clamp(min=1e-12)


def train_stack(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w_train: torch.Tensor,
                w_val: torch.Tensor | None, config: TrainConfig, generator: torch.Generator,
                progress: bool = False) -> np.ndarray:
    """Adam on all heads at once; keeps each head's parameters from its best validation epoch.

    x: (S, n, L, H) normalised features; y: (S, n) class indices; w_train, w_val: (S, M, n) row weights
    (0 for padding and for the other split). Without w_val every head trains for max_epochs; with it, a set
    leaves the stack once all its members have stopped improving, so the others train on without it. Everything,
    the module and `generator` included, lives on x's device.
    Returns (S, M) the epoch each head's kept parameters come from. `progress`: a tqdm bar over the epochs.
    """
    run = _Training(module, x, y, w_train, w_val, config)
    with tqdm(range(config.max_epochs), desc=f"{x.shape[0]} set(s) × {w_train.shape[1]} member(s)", unit="epoch",
              leave=False, disable=not progress, dynamic_ncols=True) as epochs:
        return _train_epochs(run, epochs, generator)


def _train_epochs(run: "_Training", epochs: Iterable[int], generator: torch.Generator) -> np.ndarray:
    """train_stack's loop over `epochs`, stopping early when every set has stopped improving."""
    module, config, w_val, y = run.module, run.config, run.w_val, run.y
    # full batches: epoch e's training forward is also the validation forward of the parameters after epoch e-1,
    # so validating costs no pass of its own over the features
    fused = w_val is not None and y.shape[1] <= config.batch_rows
    for epoch in epochs:
        if fused:
            logits = module(run.x)  # (S, M, n, C)
            if epoch > 0:
                if run.record(_mean_ce(logits.detach(), run.y, run.w_val), epoch - 1):
                    return run.finish()
                if logits.shape[0] != run.x.shape[0]:  # stopped sets have left the stack
                    logits = module(run.x)
            run.step(logits, run.y, run.w_train)
            continue
        for xb, yb, wb in run.batches(generator):
            run.step(module(xb), yb, wb)
        if w_val is not None and run.record(validation_loss(module, run.x, run.y, run.w_val, config.batch_rows), epoch):
            return run.finish()
    if fused:
        run.record(validation_loss(module, run.x, run.y, run.w_val, config.batch_rows), config.max_epochs - 1)
    return run.finish()


class _Training:
    """The state of one stack in training: the sets still training, their rows and weights, Adam, and each
    head's best validation loss and parameters so far."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w_train: torch.Tensor,
                 w_val: torch.Tensor | None, config: TrainConfig) -> None:
        S, M = w_train.shape[:2]
        device = x.device
        self.module, self.config = module, config
        self.x, self.y, self.w_train, self.w_val = layer_major(x), y, w_train, w_val
        self.gathered: dict[tuple[int, ...], torch.Tensor] = {}  # minibatch buffers by shape (_gather)
        self.names = [name for name, _ in module.named_parameters(recurse=False)]  # a stack's are all its own
        self.buffers = dict(module.named_buffers(recurse=False))  # the full stack's, put back by finish()
        self.opt = torch.optim.Adam(module.parameters(), lr=config.lr)
        # scikit-learn's C: 0.5·|W|²/C + Σ CE  ==  mean CE + |W|²/(2·C·n) per head, n its training weight
        self.l2 = 1.0 / (2.0 * config.C * w_train.sum(-1).clamp(min=1.0))  # (S, M)
        self.best_epoch = torch.full((S, M), config.max_epochs - 1, device=device)
        if w_val is not None:
            self.kept = [getattr(module, name).detach().clone() for name in self.names]  # full stack
            self.best = torch.full((S, M), float("inf"), device=device)
            self.since = torch.zeros(S, M, dtype=torch.long, device=device)
            self.active = torch.arange(S, device=device)  # the sets still training: their rows in the full stack

    def batches(self, generator: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch's (x, y, w_train): the full batch as it is, or shuffled minibatches gathered from the layout."""
        n, size = self.y.shape[1], self.config.batch_rows
        if n <= size:
            return [(self.x, self.y, self.w_train)]
        order = torch.randperm(n, generator=generator, device=self.x.device).split(size)
        layers_first = self.x.transpose(1, 2)  # (S, L, n, H), contiguous
        return ((self._gather(layers_first, rows).transpose(1, 2), self.y[:, rows], self.w_train[:, :, rows])
                for rows in order)

    def _gather(self, layers_first: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """layers_first (S, L, n, H)[:, :, rows], written into a buffer kept for minibatches of that size. A new
        tensor for each would cost more than the copy: 4,096 rows of MiniLM's 7 × 384 features are 44 MB, above
        glibc's largest mmap threshold (32 MB), so each would be mapped afresh and fault in every page. Safe to
        reuse: a minibatch's step, backward included, is over before the next one is gathered."""
        shape = (*layers_first.shape[:2], len(rows), layers_first.shape[-1])
        if shape not in self.gathered:
            self.gathered[shape] = layers_first.new_empty(shape)
        return torch.index_select(layers_first, 2, rows, out=self.gathered[shape])

    def step(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        """One Adam step on the weighted mean cross-entropy of logits (S, M, b, C) plus each head's L2 penalty."""
        self.opt.zero_grad(set_to_none=True)
        (_mean_ce(logits, y, w) + self.l2 * self.module.penalty()).sum().backward()
        self.opt.step()

    @torch.no_grad()
    def record(self, val: torch.Tensor, epoch: int) -> bool:
        """Note the heads' validation losses (S, M) after `epoch`, keep the parameters of those that improved,
        and let sets whose members have all stopped leave the stack. True when every set has stopped."""
        better = val < self.best - 1e-5
        self.best = torch.where(better, val, self.best)
        self.best_epoch[self.active] = torch.where(better, epoch, self.best_epoch[self.active])
        self.since = torch.where(better, torch.zeros_like(self.since), self.since + 1)
        if better.any():
            sets, members = better.nonzero(as_tuple=True)
            for name, k in zip(self.names, self.kept):
                k[self.active[sets], members] = getattr(self.module, name).detach()[sets, members]
        stopped = (self.since >= self.config.patience).all(-1)  # (S,) every member of the set has stopped
        if bool(stopped.all()):
            return True
        if bool(stopped.any()):
            self._keep((~stopped).nonzero().squeeze(1))
        return False

    def _keep(self, keep: torch.Tensor) -> None:
        """Shrink the stack to the sets `keep`: rows, weights, records, parameters, buffers, Adam's moments."""
        self.active, self.x, self.y, self.w_train, self.w_val, self.l2, self.best, self.since = (
            t[keep] for t in (self.active, self.x, self.y, self.w_train, self.w_val, self.l2, self.best, self.since))
        self.gathered = {}  # sized for the sets that left
        group = self.opt.param_groups[0]["params"]
        for name in self.names:
            old = getattr(self.module, name)
            new = torch.nn.Parameter(old.detach()[keep])
            setattr(self.module, name, new)
            group[next(i for i, p in enumerate(group) if p is old)] = new
            self.opt.state[new] = {k: v[keep] if torch.is_tensor(v) and v.dim() > 0 else v
                                   for k, v in self.opt.state.pop(old, {}).items()}
        for name, buffer in list(self.module.named_buffers(recurse=False)):
            setattr(self.module, name, buffer[keep])

    def finish(self) -> np.ndarray:
        """Put the full stack back, each head with its kept parameters; (S, M) the epochs they come from."""
        if self.w_val is not None:
            for name, k in zip(self.names, self.kept):
                setattr(self.module, name, torch.nn.Parameter(k))
            for name, buffer in self.buffers.items():
                setattr(self.module, name, buffer)
        return self.best_epoch.cpu().numpy()


def validation_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    batch_rows: int) -> torch.Tensor:
    """(S, M) weighted mean cross-entropy without dropout."""
    total = torch.zeros(w.shape[:2], device=w.device)
    for start in range(0, y.shape[1], batch_rows):
        sl = slice(start, start + batch_rows)
        total += (_ce(module(x[:, sl]), y[:, sl]) * w[:, :, sl]).sum(-1)
    return total / w.sum(-1).clamp(min=1e-12)
