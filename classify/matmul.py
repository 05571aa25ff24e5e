"""The products the heads and the batched regressions spend their time in: many rows times a few columns.

x (…, n, H) @ w (…, H, K) with K a handful (classes, members, folds × classes) reads x once and writes little;
it is bound by reading x. BLAS libraries do not run every orientation of it equally well: on some CPUs the torch
wheel's MKL runs it several times slower than the same product with the narrow matrix on the left, (wᵀ xᵀ)ᵀ,
forward and backward (docs/benchmarks.md, "Many heads at once"). Autograd differentiates the narrow-left form into the
narrow-left products too (gᵀ x for w's gradient), so writing the forward pass this way is enough. The batched
regressions (logreg.py) keep their weights and logits class-major, which is this orientation without a transpose.
"""
from __future__ import annotations

import torch


def times_narrow(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B…, n, H) @ w (B…, H, K) for small K, as (wᵀ xᵀ)ᵀ: the same values (up to float rounding) as
    torch.matmul(x, w), returned as a transposed view (B…, n, K). x and w have the same batch shape: a broadcast
    batch would make torch copy x for every w."""
    return torch.matmul(w.mT, x.mT).mT
