"""Pooling every hidden state of a batch into one vector per document, on the device."""
from __future__ import annotations

import torch

POOLINGS = ("mean", "cls", "last", "max")


def first_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first position whose mask is 1, per row, whatever the padding side. (batch,)"""
    return mask.int().argmax(dim=1)


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row, whatever the padding side. (batch,)"""
    seq = mask.shape[1]
    return seq - 1 - mask.int().flip(1).argmax(dim=1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool token states into document vectors.

    hidden: (layers, batch, seq, hidden) every hidden state, embeddings first.
    mask: (batch, seq) attention mask, 1 for real tokens (special tokens included), 0 for padding.
    method: "mean" over the positions whose mask is 1 (as sentence-transformers does); "cls" the first
        real token; "last" the last real token (right for decoder-only models, either padding side);
        "max" the element-wise maximum over real positions.
    Returns (batch, layers, hidden) in hidden's dtype.
    """
    if method not in POOLINGS:
        raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, got {method!r}.")
    batch = torch.arange(hidden.shape[1], device=hidden.device)
    if method == "mean":
        m = mask.to(hidden.dtype)  # (batch, seq)
        summed = torch.einsum("lbsh,bs->blh", hidden, m)  # (batch, layers, hidden)
        return summed / m.sum(dim=1).clamp(min=1)[:, None, None]
    if method == "cls":
        return hidden[:, batch, first_real(mask)].transpose(0, 1)  # (batch, layers, hidden)
    if method == "last":
        return hidden[:, batch, last_real(mask)].transpose(0, 1)  # (batch, layers, hidden)
    masked = hidden.masked_fill(~mask.bool()[None, :, :, None], torch.finfo(hidden.dtype).min)
    return masked.amax(dim=2).transpose(0, 1)  # (batch, layers, hidden)
