"""Stacks of heads: the layout they train in, several sets × members against numpy, minibatches."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from finetext.classify.stack import (PROJECT_FIRST_COLUMNS, LayerAttentionStack, ScalarMixStack, TrainConfig, _ce, layer_major,
                            train_stack, validation_loss)
from tests.classify.test_heads import softmax


def test_layer_major_keeps_shape_and_values_and_lays_each_layer_out_contiguously():
    x = torch.randn(2, 5, 3, 4)  # (S, n, L, H)
    lm = layer_major(x)
    assert lm.shape == x.shape and torch.equal(lm, x)
    assert lm.transpose(1, 2).is_contiguous() and not x.transpose(1, 2).is_contiguous()
    assert layer_major(lm).data_ptr() == lm.data_ptr()  # already laid out: no copy


def test_layer_attention_with_sets_and_members_matches_numpy_in_either_layout():
    S, M, n, L, H, C = 2, 3, 5, 3, 4, 2
    gen = torch.Generator().manual_seed(0)
    m = LayerAttentionStack(S, M, L, H, C, gen)
    with torch.no_grad():
        m.u.normal_(generator=gen)
        m.w.normal_(generator=gen)
        m.b.normal_(generator=gen)
    x = np.random.default_rng(3).normal(size=(S, n, L, H)).astype(np.float32)
    u, p, W, b = (t.detach().numpy() for t in (m.u, m.w, m.W, m.b))
    alpha = softmax(np.einsum("snlh,smlh->smnl", x, u) / np.sqrt(H) + p[:, :, None, :])  # (S, M, n, L)
    want = np.einsum("snlh,smlhc,smnl->smnc", x, W, alpha) + b[:, :, None, :]
    for xt in (torch.from_numpy(x), layer_major(torch.from_numpy(x))):
        np.testing.assert_allclose(m.layer_weights(xt).detach().numpy(), alpha, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m(xt).detach().numpy(), want, rtol=1e-5, atol=1e-5)


def scalar_mix(S: int, M: int, L: int, H: int, C: int, gen: torch.Generator) -> ScalarMixStack:
    """A stack whose mix is neither uniform nor unscaled."""
    m = ScalarMixStack(S, M, L, H, C, gen)
    with torch.no_grad():
        m.w.normal_(generator=gen)
        m.gamma.uniform_(0.5, 2.0, generator=gen)
    return m


@pytest.mark.parametrize("M, C", [(1, 3), (2, 3), (2, PROJECT_FIRST_COLUMNS // 2 + 1)],
                         ids=["one-member", "members", "members-many-classes"])  # mix first, project first, mix first
def test_scalar_mix_with_sets_matches_numpy_in_either_layout(M, C):
    S, n, L, H = 2, 4, 3, 5
    m = scalar_mix(S, M, L, H, C, torch.Generator().manual_seed(1))
    x = np.random.default_rng(4).normal(size=(S, n, L, H)).astype(np.float32)
    w, g, W, b = (t.detach().numpy() for t in (m.w, m.gamma, m.W, m.b))
    z = g[..., None, None] * np.einsum("snlh,sml->smnh", x, softmax(w))
    want = np.einsum("smnh,smhc->smnc", z, W) + b[:, :, None, :]
    for xt in (torch.from_numpy(x), layer_major(torch.from_numpy(x))):
        np.testing.assert_allclose(m(xt).detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_scalar_mix_members_project_then_mix_with_the_gradients_of_mixing_first():
    S, M, n, L, H, C = 2, 3, 6, 4, 5, 3
    gen = torch.Generator().manual_seed(2)
    m = scalar_mix(S, M, L, H, C, gen)
    x = layer_major(torch.randn(S, n, L, H, generator=gen))
    target = torch.randn(S, M, n, C, generator=gen)
    params = [m.w, m.gamma, m.W, m.b]
    got = torch.autograd.grad((m(x) * target).sum(), params)
    z = m.gamma[..., None, None] * torch.einsum("snlh,sml->smnh", x, m.w.softmax(-1))  # the mix, then W
    want = torch.autograd.grad(((z @ m.W + m.b[:, :, None, :]) * target).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_minibatches_learn_and_train_a_set_in_a_stack_as_it_trains_alone():
    n, L, H, C = 60, 3, 6, 3
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(2, n, L, H)).astype(np.float32))
    y = x[:, :, 1, :C].argmax(-1)  # (S, n): each row's label is written in its own features
    config = TrainConfig(max_epochs=40, batch_rows=16)  # 4 minibatches per epoch, gathered from the layout

    def trained(sets: slice) -> LayerAttentionStack:
        S = len(range(2)[sets])
        module = LayerAttentionStack(S, 1, L, H, C, torch.Generator().manual_seed(0))
        with torch.no_grad():  # the same start for set 1 in both stacks
            module.W.fill_(0.01)
        train_stack(module, x[sets], y[sets], torch.ones(S, 1, n), None, config, torch.Generator().manual_seed(7))
        return module

    both = trained(slice(0, 2))
    with torch.no_grad():
        accuracy = (both(x).argmax(-1)[:, 0] == y).float().mean(-1)  # (S,) on the training rows
    assert (accuracy > 0.9).all()  # rows and labels stayed paired through the gather
    torch.testing.assert_close(both.W.detach()[1:], trained(slice(1, 2)).W.detach(), rtol=1e-5, atol=1e-6)


def test_minibatched_sets_that_stop_leave_the_stack_and_keep_training_as_alone():
    # sets stop at different epochs, so the stack shrinks while its minibatch buffers are in use (_Training._gather)
    n, L, H, C = 60, 3, 6, 3
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.normal(size=(3, n, L, H)).astype(np.float32))
    noisy = torch.from_numpy(rng.random((3, n)) < np.array([[0.0], [0.4], [0.7]]))  # noisier sets overfit sooner
    y = torch.where(noisy, torch.from_numpy(rng.integers(0, C, (3, n))), x[:, :, 1, :C].argmax(-1))
    w_val = (torch.arange(n) % 4 == 0).float().expand(3, 1, n)
    config = TrainConfig(max_epochs=80, patience=4, batch_rows=16)  # 3 minibatches of 16 and one of 12

    def trained(sets: slice) -> tuple[LayerAttentionStack, np.ndarray]:
        S = len(range(3)[sets])
        module = LayerAttentionStack(S, 1, L, H, C, torch.Generator().manual_seed(0))
        with torch.no_grad():
            module.W.fill_(0.01)
        epochs = train_stack(module, x[sets], y[sets], 1 - w_val[sets], w_val[sets], config,
                             torch.Generator().manual_seed(7))
        return module, epochs

    stack, epochs = trained(slice(0, 3))
    assert len(set(epochs.ravel())) == 3 and epochs.min() < config.max_epochs - config.patience - 1  # apart, early
    for s in range(3):
        alone, epoch = trained(slice(s, s + 1))
        assert epoch[0, 0] == epochs[s, 0]
        torch.testing.assert_close(stack.W.detach()[s:s + 1], alone.W.detach(), rtol=1e-5, atol=1e-6)


def test_validating_from_the_next_training_forward_equals_validating_after_each_step():
    # full batches without dropout read each epoch's validation loss off the next epoch's forward pass;
    # the plain loop below steps, validates, and keeps each head's best parameters, as train_stack promises
    S, M, n, L, H, C = 1, 3, 45, 3, 8, 3
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(S, n, L, H)).astype(np.float32))
    y = torch.where(torch.from_numpy(rng.random((S, n)) < 0.3), torch.from_numpy(rng.integers(0, C, (S, n))),
                    x[:, :, 1, :C].argmax(-1))  # 30% of the labels are noise: the heads overfit and stop
    w_val = (torch.arange(n) % M == torch.arange(M)[:, None]).float()[None]  # (S, M, n): member m's fold
    w_train = 1 - w_val
    config = TrainConfig(lr=0.05, max_epochs=200, patience=5)
    module = LayerAttentionStack(S, M, L, H, C, torch.Generator().manual_seed(0))
    reference = copy.deepcopy(module)
    epochs = train_stack(module, x, y, w_train, w_val, config, torch.Generator().manual_seed(1))

    opt = torch.optim.Adam(reference.parameters(), lr=config.lr)
    l2 = 1.0 / (2.0 * config.C * w_train.sum(-1))
    best, since = torch.full((S, M), float("inf")), torch.zeros(S, M, dtype=torch.long)
    best_epoch = torch.full((S, M), config.max_epochs - 1)
    kept = {name: p.detach().clone() for name, p in reference.named_parameters()}
    for epoch in range(config.max_epochs):
        opt.zero_grad()
        loss = (_ce(reference(x), y) * w_train).sum(-1) / w_train.sum(-1)
        (loss + l2 * reference.penalty()).sum().backward()
        opt.step()
        with torch.no_grad():
            val = validation_loss(reference, x, y, w_val, config.batch_rows)
            better = val < best - 1e-5
            best, best_epoch = torch.where(better, val, best), torch.where(better, epoch, best_epoch)
            since = torch.where(better, 0, since + 1)
            for name, p in reference.named_parameters():
                kept[name][better] = p[better]
        if (since >= config.patience).all():
            break
    assert epochs.max() < config.max_epochs - config.patience - 1 and len(set(epochs.ravel())) > 1
    np.testing.assert_array_equal(epochs, best_epoch.numpy())
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), kept[name], rtol=0, atol=0)
