"""Attention over tokens within each layer, then over layers: the head for the token-level cache."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from finetext.classify.features import check_features, check_known_labels, check_labels
from finetext.classify.matmul import times_narrow
from finetext.classify.persist import SaveLoadMixin
from finetext.classify.stack import SELECTOR_L2, LayerAttentionStack


# How many tokens' weighted states a_t·x_t are summed into their documents at once. The whole batch's (and its
# gradient) is ~36 MB for 256 TREC questions: each step mapped such arrays afresh and faulted in every page. In
# chunks they stay small and reused, with bitwise the same sums (index_add adds in token order either way).
TOKEN_CHUNK = 1024


def check_token_features(X: object, expected: tuple[int, int] | None = None,
                         owner: str = "TokenLayerAttention") -> list[np.ndarray]:
    """X as a list of float32 arrays (n_tokens_i, n_layers, hidden), one per document. Arrays are read as
    documents of one token each when they are pooled features, (n_docs, n_layers, hidden) or (n_docs, hidden)
    (see features.check_features), and as padded token states when 4-D (all-zero rows are padding)."""
    if isinstance(X, np.ndarray) and X.ndim == 4:  # padded (n_docs, tokens, layers, hidden)
        X = [doc[np.abs(doc).sum(axis=(1, 2)) > 0] for doc in X]
    elif sp.issparse(X) or not isinstance(X, Sequence) or (len(X) and np.ndim(X[0]) <= 1):
        X = list(check_features(X, owner=owner)[:, None])  # pooled features (any array-like): one token each
    if not isinstance(X, Sequence):
        raise ValueError(f"X: expected a list of (n_tokens, n_layers, hidden) arrays, got {type(X).__name__}. "
                         "Read one from a cache extracted with --tokens: open_cache(path).token_states().")
    docs = [np.asarray(d, dtype=np.float32) for d in X]
    if not docs:
        raise ValueError("X: no documents.")
    shapes = {d.shape[1:] for d in docs}
    if any(d.ndim != 3 or len(d) == 0 for d in docs) or len(shapes) != 1:
        raise ValueError(f"X: every document must be a non-empty (n_tokens, n_layers, hidden) array with the same "
                         f"(n_layers, hidden); got shapes like {sorted({d.shape for d in docs})[:3]}.")
    shape = shapes.pop()
    if expected is not None and tuple(shape) != tuple(expected):
        raise ValueError(f"X has {shape[0] * shape[1]} features, but {owner} is expecting {expected[0] * expected[1]} "
                         f"features as input (per token): it was fitted on token features of shape (n_layers, "
                         f"hidden) = {tuple(expected)}, got {tuple(shape)}. Use token states from the same model and "
                         "--token-layers.")
    if not all(np.isfinite(d).all() for d in docs):
        raise ValueError("X: NaN or inf token features; check the cache with `finetext verify`.")
    return docs


def _ragged(docs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents (n_tokens_i, L, H) -> their tokens one after another (tokens, L, H) and each token's document
    (tokens,): the cache's own ragged layout, so no step pays for padding (random batches of TREC-6 questions
    padded to the longest held 2.5x their tokens)."""
    segment = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
    return torch.from_numpy(np.concatenate(docs)), torch.from_numpy(segment)


class TokenLayerAttention(SaveLoadMixin, ClassifierMixin, BaseEstimator):
    """Token attention within each layer (a learned query per layer), then LayerAttention across layers.

    X: a list of (n_tokens_i, n_layers, hidden) arrays (Cache.token_states()); pooled features, (n_docs, n_layers,
    hidden) or (n_docs, hidden), are documents of one token each (so scikit-learn's estimator checks apply). Per
    layer l, a_t = softmax_t(x_{t,l}·q_l/√H) pools the tokens; the pooled (n_layers, hidden) vectors go through the
    same selector and classifiers as LayerAttention. q starts at 0, so it starts from mean pooling. `verbose`: a tqdm
    bar over the epochs.
    """

    def __init__(self, *, C: float = 0.5, lr: float = 1e-2, epochs: int = 300, batch_docs: int = 256,
                 random_state: int | None = 0, verbose: bool = False) -> None:
        self.C = C
        self.lr = lr
        self.epochs = epochs
        self.batch_docs = batch_docs
        self.random_state = random_state
        self.verbose = verbose

    def _forward(self, x: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
        """x (tokens, L, H) of n documents, segment (tokens,) each token's document -> logits (n, C)"""
        # x_{t,l}·q_l for every token and layer, the query on the left (matmul.py): (L, tokens, 1) -> (tokens, L)
        scores = times_narrow(x.transpose(0, 1), self.query_[:, :, None])[..., 0].T / math.sqrt(x.shape[-1])
        with torch.no_grad():  # softmax within each document; the shift by its max only keeps exp() finite
            top = scores.new_full((n, scores.shape[1]), -math.inf).scatter_reduce_(
                0, segment[:, None].expand_as(scores), scores, "amax")  # (n, L)
        e = (scores - top[segment]).exp()
        a = e / e.new_zeros(n, e.shape[1]).index_add_(0, segment, e)[segment]  # (tokens, L) attention over tokens
        pooled = x.new_zeros(n, *x.shape[1:])  # (n, L, H): Σ_t a_t x_t per document, TOKEN_CHUNK tokens at a time
        for start in range(0, len(x), TOKEN_CHUNK):
            chunk = slice(start, start + TOKEN_CHUNK)
            pooled.index_add_(0, segment[chunk], x[chunk] * a[chunk, :, None])
        return self.selector_(pooled[None])[0, 0]  # (n, C)

    def fit(self, X: object, y: object) -> "TokenLayerAttention":
        docs = check_token_features(X, owner=type(self).__name__)
        self.classes_, codes = check_labels(y, len(docs), type(self).__name__)
        stacked = np.concatenate(docs)  # (all tokens, L, H)
        self.mean_, self.std_ = stacked.mean(0), np.maximum(stacked.std(0), 1e-6)
        stacked -= self.mean_  # normalised once, not in every epoch
        stacked /= self.std_
        docs = np.split(stacked, np.cumsum([len(d) for d in docs])[:-1])
        L, H = stacked.shape[1:]
        self.n_layers_, self.hidden_size_ = int(L), int(H)
        self.n_features_in_ = self.n_layers_ * self.hidden_size_
        gen = torch.Generator().manual_seed(0 if self.random_state is None else int(self.random_state))
        self.query_ = torch.zeros(L, H, requires_grad=True)
        self.selector_ = LayerAttentionStack(1, 1, L, H, len(self.classes_), gen)
        opt = torch.optim.Adam([self.query_, *self.selector_.parameters()], lr=self.lr)
        y_t = torch.from_numpy(codes)
        l2 = 1.0 / (2.0 * self.C * len(docs))
        for _ in tqdm(range(self.epochs), desc=type(self).__name__, unit="epoch", leave=False,
                      disable=not self.verbose, dynamic_ncols=True):
            order = torch.randperm(len(docs), generator=gen).tolist()
            for start in range(0, len(docs), self.batch_docs):
                idx = order[start:start + self.batch_docs]
                x, segment = _ragged([docs[i] for i in idx])
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(self._forward(x, segment, len(idx)), y_t[idx])
                penalty = self.selector_.penalty()[0, 0] + SELECTOR_L2 * (self.query_ ** 2).sum()
                (loss * len(idx) / len(docs) + l2 * penalty * len(idx) / len(docs)).backward()
                opt.step()
        self.query_ = self.query_.detach()
        return self

    @torch.no_grad()
    def predict_proba(self, X: object) -> np.ndarray:
        check_is_fitted(self, "query_")
        docs = check_token_features(X, expected=(self.n_layers_, self.hidden_size_), owner=type(self).__name__)
        chunks = (docs[s:s + self.batch_docs] for s in range(0, len(docs), self.batch_docs))
        out = [self._forward(*_ragged([(d - self.mean_) / self.std_ for d in chunk]), len(chunk)).softmax(-1).numpy()
               for chunk in chunks]
        return np.concatenate(out)

    def predict(self, X: object) -> np.ndarray:
        proba = self.predict_proba(X)  # checks that the head is fitted first
        return self.classes_[proba.argmax(1)]

    def predict_log_proba(self, X: object) -> np.ndarray:
        with np.errstate(divide="ignore"):  # a probability of exactly 0 is -inf, as scikit-learn gives it
            return np.log(self.predict_proba(X))

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        check_is_fitted(self, "query_")
        return super().score(X, check_known_labels(self.classes_, y), sample_weight)

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"selector.{k}": v.detach().numpy() for k, v in self.selector_.state_dict().items()}
        return {**arrays, "query": self.query_.numpy(), "mean": self.mean_, "std": self.std_}, {}

    def import_state(self, classes: np.ndarray, n_layers: int, hidden: int, arrays: dict[str, np.ndarray],
                config: dict[str, Any]) -> None:
        self.classes_, self.n_layers_, self.hidden_size_ = classes, n_layers, hidden
        self.n_features_in_ = n_layers * hidden
        self.selector_ = LayerAttentionStack(1, 1, n_layers, hidden, len(classes), torch.Generator())
        self.selector_.load_state_dict({k[len("selector."):]: torch.from_numpy(v) for k, v in arrays.items()
                                        if k.startswith("selector.")})
        self.query_ = torch.from_numpy(arrays["query"])
        self.mean_, self.std_ = arrays["mean"], arrays["std"]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True  # pooled features: one token per document
        tags.input_tags.three_d_array = True
        return tags
