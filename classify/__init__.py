"""Stage 2 of finetext: cached arrays (n_docs, n_layers, hidden) → fitted heads. Never imports transformers."""
from finetext.classify.budget import sample_budget
from finetext.classify.heads import LayerAttention, ScalarMix
from finetext.classify.last_layer import LastLayerLogReg
from finetext.classify.many import fit_many
from finetext.classify.persist import check_feature_source, load_head, save_head
from finetext.classify.pool_prior import PoolPrior
from finetext.classify.token_attention import TokenLayerAttention

__all__ = ["LastLayerLogReg", "LayerAttention", "ScalarMix", "TokenLayerAttention", "check_feature_source",
           "PoolPrior", "fit_many", "load_head", "sample_budget", "save_head"]
