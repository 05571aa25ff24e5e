import torch

from finetext.classify.matmul import times_narrow


def test_times_narrow_is_the_product_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 40, 16, generator=g, requires_grad=True)  # (S, L, n, H)
    w = torch.randn(3, 5, 16, 4, generator=g, requires_grad=True)  # (S, L, H, K)
    out = times_narrow(x, w)
    ref = torch.matmul(x, w)
    assert out.shape == ref.shape == (3, 5, 40, 4)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(out.shape, generator=g)
    gx, gw = torch.autograd.grad((out * upstream).sum(), (x, w))
    rx, rw = torch.autograd.grad((ref * upstream).sum(), (x, w))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
