"""Stage 2 of finetext: cached arrays (n_docs, n_layers, hidden) → fitted heads. Never imports transformers.

Names load on first use (PEP 562), so importing `finetext.classify` for its errors does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from finetext.lazy import lazy_names

_MODULES = {  # public name -> the module of this package that defines it
    "sample_budget": "budget", "HeadFormatError": "errors", "LayerAttention": "heads", "ScalarMix": "heads",
    "LastLayerLogReg": "last_layer", "fit_many": "many", "check_feature_source": "persist", "load_head": "saved",
    "save_head": "persist", "PoolPrior": "pool_prior", "TokenLayerAttention": "token_attention",
}
__all__ = ["HeadFormatError", "LastLayerLogReg", "LayerAttention", "PoolPrior", "ScalarMix", "TokenLayerAttention",
           "check_feature_source", "fit_many", "load_head", "sample_budget", "save_head"]

if TYPE_CHECKING:
    from finetext.classify.budget import sample_budget
    from finetext.classify.errors import HeadFormatError
    from finetext.classify.heads import LayerAttention, ScalarMix
    from finetext.classify.last_layer import LastLayerLogReg
    from finetext.classify.many import fit_many
    from finetext.classify.persist import check_feature_source, save_head
    from finetext.classify.saved import load_head
    from finetext.classify.pool_prior import PoolPrior
    from finetext.classify.token_attention import TokenLayerAttention


__getattr__, __dir__ = lazy_names('finetext.classify', _MODULES, globals())
