"""TokenLayerAttention: token pooling on the ragged layout against numpy by hand."""
from __future__ import annotations

import numpy as np
import torch

import finetext.classify.token_attention
from finetext.classify import TokenLayerAttention
from finetext.classify.token_attention import _ragged


def test_token_pooling_matches_numpy_on_ragged_documents():
    rng = np.random.default_rng(0)
    docs = [rng.normal(size=(n, 3, 6)).astype(np.float32) for n in (1, 4, 9, 2)]  # (tokens, layers, hidden)
    head = TokenLayerAttention(epochs=3).fit(docs, ["a", "b", "a", "b"])
    head.query_ = torch.from_numpy(rng.normal(size=(3, 6)).astype(np.float32) * 20)  # big scores: a max shift
    pooled = []
    for d in docs:
        s = np.einsum("tlh,lh->tl", d, head.query_.numpy()) / np.sqrt(6)  # (tokens, layers)
        a = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)  # softmax over each document's own tokens
        pooled.append(np.einsum("tlh,tl->lh", d, a))
    with torch.no_grad():
        want = head.selector_(torch.from_numpy(np.stack(pooled).astype(np.float32))[None])[0, 0].numpy()
        got = head._forward(*_ragged(docs), len(docs)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pooling_in_chunks_of_tokens_gives_bitwise_the_same_logits_and_gradients(monkeypatch):
    rng = np.random.default_rng(1)
    docs = [rng.normal(size=(n, 3, 6)).astype(np.float32) for n in (5, 1, 7, 3, 4)]
    head = TokenLayerAttention(epochs=2).fit(docs, ["a", "b", "a", "b", "a"])
    head.query_ = torch.from_numpy(rng.normal(size=(3, 6)).astype(np.float32)).requires_grad_()

    def logits_and_gradients(chunk: int) -> list[torch.Tensor]:
        monkeypatch.setattr(finetext.classify.token_attention, "TOKEN_CHUNK", chunk)
        out = head._forward(*_ragged(docs), len(docs))
        return [out.detach(), *torch.autograd.grad(out.square().sum(), [head.query_, head.selector_.u])]

    for whole, chunked in zip(logits_and_gradients(10_000), logits_and_gradients(4)):  # chunks split documents
        assert torch.equal(whole, chunked)
