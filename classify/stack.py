"""Many independent heads trained as one model: every parameter has a leading head axis G.

One forward and one backward pass serve all G heads. Each head sees its own rows (gathered and padded to a
common length, padding weighted 0), its own normalisation, its own initialisation and dropout stream, and
its own early stopping: heads never share a gradient because the summed loss separates by head and Adam's
updates are element-wise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class ScalarMixStack(torch.nn.Module):
    """ELMo's scalar mix then a linear classifier, G times.

    z = γ · Σ_l softmax(w)_l · x_l;  logits = dropout(z) W + b
    """

    def __init__(self, G: int, L: int, H: int, C: int, generator: torch.Generator) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(G, L))  # uniform mix at the start
        self.gamma = torch.nn.Parameter(torch.ones(G))
        self.W = torch.nn.Parameter(torch.randn(G, H, C, generator=generator) / math.sqrt(H))
        self.b = torch.nn.Parameter(torch.zeros(G, C))

    def layer_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(G, n, L) mixing weights (the same for every document)."""
        return self.w.softmax(-1)[:, None, :].expand(-1, x.shape[1], -1)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """x (G, n, L, H) -> (G, n, H)"""
        return self.gamma[:, None, None] * torch.einsum("gnlh,gl->gnh", x, self.w.softmax(-1))

    def classifier_weights(self) -> list[torch.Tensor]:
        return [self.W]


class LayerAttentionStack(ScalarMixStack):
    """FineText-style selector: per-document attention over layers from the layers' own vectors, G times.

    s_l = x_l · u_l + p_l;  α = softmax_l(s / τ);  z = Σ_l α_l x_l;  logits = dropout(z) W + b
    u starts at 0, so every head starts as a uniform mix of layers and learns to leave it; p is a
    per-layer prior (a document-independent preference), τ = sqrt(H) keeps early scores small.
    """

    def __init__(self, G: int, L: int, H: int, C: int, generator: torch.Generator) -> None:
        super().__init__(G, L, H, C, generator)
        self.u = torch.nn.Parameter(torch.zeros(G, L, H))
        self.tau = math.sqrt(H)

    def layer_weights(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("gnlh,glh->gnl", x, self.u) / self.tau + self.w[:, None, :]  # (G, n, L)
        return scores.softmax(-1)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.layer_weights(x)  # (G, n, L)
        return self.gamma[:, None, None] * torch.einsum("gnlh,gnl->gnh", x, alpha)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head of a stack."""

    lr: float = 1e-2
    weight_decay: float = 1e-3  # L2 on classifier weights, per head
    dropout: float = 0.1  # on the mixed vector
    max_epochs: int = 200
    patience: int = 20  # epochs without a better validation loss before a head stops improving
    label_smoothing: float = 0.0


def train_stack(module: ScalarMixStack, x: torch.Tensor, y: torch.Tensor, w_train: torch.Tensor,
                w_val: torch.Tensor | None, config: TrainConfig, generator: torch.Generator) -> np.ndarray:
    """Full-batch Adam on all heads at once; keeps each head's parameters from its best validation epoch.

    x: (G, n, L, H) normalised features; y: (G, n) class indices; w_train, w_val: (G, n) row weights
    (0 for padding and for the other split). Without w_val every head trains for max_epochs.
    Returns (G,) the epoch each head's kept parameters come from.
    """
    G, n, L, H = x.shape
    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    train_norm = w_train.sum(1).clamp(min=1e-12)  # (G,)
    best = torch.full((G,), float("inf"))
    best_epoch = torch.full((G,), config.max_epochs - 1)
    since = torch.zeros(G, dtype=torch.long)
    snapshot = [p.detach().clone() for p in params]
    keep_p = 1.0 - config.dropout
    for epoch in range(config.max_epochs):
        module.train()
        opt.zero_grad(set_to_none=True)
        z = module.mix(x)  # (G, n, H)
        if config.dropout > 0:
            mask = torch.rand(z.shape, generator=generator) < keep_p
            z = z * mask / keep_p
        logits = torch.einsum("gnh,ghc->gnc", z, module.W) + module.b[:, None, :]  # (G, n, C)
        ce = F.cross_entropy(logits.reshape(G * n, -1), y.reshape(-1), reduction="none",
                             label_smoothing=config.label_smoothing).view(G, n)
        loss = (ce * w_train).sum(1) / train_norm  # (G,)
        l2 = sum((W ** 2).flatten(1).sum(1) for W in module.classifier_weights())  # (G,)
        (loss + config.weight_decay * l2).sum().backward()
        opt.step()
        if w_val is None:
            continue
        with torch.no_grad():
            val = evaluate_loss(module, x, y, w_val)  # (G,)
            better = val < best - 1e-5
            best = torch.where(better, val, best)
            best_epoch = torch.where(better, torch.tensor(epoch), best_epoch)
            since = torch.where(better, torch.zeros_like(since), since + 1)
            if better.any():
                for p, s in zip(params, snapshot):
                    s[better] = p.detach()[better]
            if bool((since >= config.patience).all()):
                break
    if w_val is not None:
        with torch.no_grad():
            for p, s in zip(params, snapshot):
                p.copy_(s)
    return best_epoch.numpy()


def logits_of(module: ScalarMixStack, x: torch.Tensor) -> torch.Tensor:
    """(G, n, C) logits without dropout."""
    return torch.einsum("gnh,ghc->gnc", module.mix(x), module.W) + module.b[:, None, :]


def evaluate_loss(module: ScalarMixStack, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    G, n = y.shape
    ce = F.cross_entropy(logits_of(module, x).reshape(G * n, -1), y.reshape(-1), reduction="none").view(G, n)
    return (ce * w).sum(1) / w.sum(1).clamp(min=1e-12)
