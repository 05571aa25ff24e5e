"""Pooling every hidden state of a batch into one vector per document, on the device."""
from __future__ import annotations

from typing import Sequence

import torch

from finetext.extract.cache import POOLINGS


def first_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first position whose mask is 1, per row, whatever the padding side. (batch,)"""
    return mask.int().argmax(dim=1)


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row, whatever the padding side. (batch,)"""
    seq = mask.shape[1]
    return seq - 1 - mask.int().flip(1).argmax(dim=1)


def pool(hidden: Sequence[torch.Tensor], mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool token states into document vectors.

    hidden: every hidden state, embeddings first: a model's `hidden_states` (a sequence of (batch, seq, hidden)
        tensors) or the same stacked as one (layers, batch, seq, hidden) tensor. Layers are pooled one by
        one: stacking them first costs a full copy, and one batched matmul per layer beats an einsum over the
        stack on a CPU.
    mask: (batch, seq) attention mask, 1 for real tokens (special tokens included), 0 for padding.
    method: "mean" over the positions whose mask is 1 (as sentence-transformers does); "cls" the first
        real token; "last" the last real token (right for decoder-only models, either padding side);
        "max" the element-wise maximum over real positions.
    Returns (batch, layers, hidden) in hidden's dtype.
    """
    if method not in POOLINGS:
        raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, got {method!r}.")
    layers = list(hidden)  # L × (batch, seq, hidden)
    batch = torch.arange(mask.shape[0], device=mask.device)
    if method == "mean":
        m = mask.to(layers[0].dtype)[:, None, :]  # (batch, 1, seq)
        counts = m.sum(-1, keepdim=True).clamp(min=1)  # (batch, 1, 1)
        return torch.cat([torch.bmm(m, h) for h in layers], 1) / counts  # (batch, layers, hidden)
    if method in ("cls", "last"):
        at = first_real(mask) if method == "cls" else last_real(mask)  # (batch,)
        return torch.stack([h[batch, at] for h in layers], 1)  # (batch, layers, hidden)
    padding = ~mask.bool()[:, :, None]  # (batch, seq, 1)
    return torch.stack([h.masked_fill(padding, torch.finfo(h.dtype).min).amax(1) for h in layers], 1)
