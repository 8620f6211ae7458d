"""cross_scan / cross_merge against a direct index construction, every backend."""
import sys

import pytest
import torch

from vmamba_mm.ops import cross_merge, cross_scan
from vmamba_mm.ops.cross_scan import cross_merge_naive, cross_scan_naive

from helpers import DEVICE, has_triton


BACKENDS = ['reference', 'torch',
            pytest.param('triton', marks=pytest.mark.skipif(not has_triton(),
                                                            reason='triton not installed'))]


def scan_indices(H, W):
    """idx[k][i] = row-major position (h * W + w) visited at step i of direction k."""
    row = [h * W + w for h in range(H) for w in range(W)]
    col = [h * W + w for w in range(W) for h in range(H)]
    return torch.tensor([row, col, row[::-1], col[::-1]])


def scan_by_index(x):
    B, C, H, W = x.shape
    flat = x.reshape(B, C, H * W)
    return torch.stack([flat[:, :, idx] for idx in scan_indices(H, W)], dim=1)


def merge_by_index(ys):
    B, K, C, H, W = ys.shape
    out = ys.new_zeros(B, C, H * W)
    for k, idx in enumerate(scan_indices(H, W)):
        out.index_add_(2, idx, ys[:, k].reshape(B, C, H * W))
    return out.view(B, C, H, W)


def test_index_construction_orders():
    """The explicit orders on a 2 x 3 map, written out."""
    idx = scan_indices(2, 3)
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5],
                            [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 1, 9), (1, 4, 8, 8), (2, 1, 33, 3)])
def test_cross_scan_forward_backward(backend, shape):
    x = torch.randn(shape, dtype=torch.float32, device=DEVICE, requires_grad=True)
    y = cross_scan(x, backend=backend)
    expected = scan_by_index(x.detach())
    assert y.shape == (shape[0], 4, shape[1], shape[2] * shape[3])
    assert torch.equal(y.detach(), expected)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    B, K, C, L = g.shape
    assert torch.allclose(gx, merge_by_index(g.view(B, K, C, *shape[2:])), atol=1e-6)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 1, 9), (2, 1, 33, 3)])
def test_cross_merge_forward_backward(backend, shape):
    B, C, H, W = shape
    ys = torch.randn(B, 4, C, H, W, device=DEVICE, requires_grad=True)
    out = cross_merge(ys, backend=backend)
    assert out.shape == shape
    assert torch.allclose(out.detach(), merge_by_index(ys.detach()), atol=1e-6)
    g = torch.randn_like(out)
    (gys,) = torch.autograd.grad(out, ys, g)
    assert torch.equal(gys, scan_by_index(g).view(B, 4, C, H, W))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    x = torch.randn(1, 2, 3, 5, device=DEVICE).to(dtype)
    y = cross_scan(x, backend=backend)
    assert y.dtype == dtype and torch.equal(y, scan_by_index(x))
    ys = torch.randn(1, 4, 2, 3, 5, device=DEVICE).to(dtype)
    out = cross_merge(ys, backend=backend)
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    assert torch.allclose(out.double(), merge_by_index(ys.double()), atol=tol, rtol=tol)


def test_merge_of_scan_counts_each_position_four_times():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    assert torch.allclose(cross_merge(cross_scan(x).view(2, 4, 3, 4, 6)), 4 * x)


def test_torch_backend_gradgradcheck():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: cross_scan(t, backend='torch'), (x,))
    ys = torch.randn(1, 4, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: cross_merge(t, backend='torch'), (ys,))


@pytest.mark.parametrize('fn,arg,error,match', [
    (cross_scan, torch.randn(2, 3, 4), ValueError, r'x must be \(B, C, H, W\)'),
    (cross_scan, torch.randint(0, 2, (1, 2, 3, 4)), TypeError, 'floating dtype'),
    (cross_merge, torch.randn(1, 3, 2, 4, 4), ValueError, r'K = 4 directions'),
    (cross_merge, torch.randn(1, 4, 2, 16), ValueError, r'ys must be \(B, 4, C, H, W\)'),
    (cross_merge, [1.0], TypeError, 'must be a Tensor'),
])
def test_errors(fn, arg, error, match):
    with pytest.raises(error, match=match):
        fn(arg)


def test_unknown_backend():
    with pytest.raises(ValueError, match='unknown backend'):
        cross_scan(torch.randn(1, 1, 2, 2), backend='cuda')


def test_triton_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    monkeypatch.delitem(sys.modules, 'vmamba_mm.ops.cross_scan.kernels', raising=False)
    with pytest.raises(ImportError, match="backend 'triton' needs the triton package"):
        cross_scan(torch.randn(1, 1, 2, 2), backend='triton')


@pytest.mark.parametrize('hw', [(1, 1), (3, 5), (6, 4)])
def test_time_major_pair_matches_naive_and_is_adjoint(hw):
    """The 'torch' backend's time-major pair (SS2D's layout): the naive orders
    transposed, and gradcheck (each Function's backward is the other one)."""
    from vmamba_mm.ops.cross_scan.functions import cross_merge_time_major, cross_scan_time_major
    H, W = hw
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    ys = torch.randn(2, 4, 3, H, W, dtype=torch.float64)
    xs = cross_scan_time_major(x.permute(0, 2, 3, 1))  # (B, L, 4, C)
    assert torch.equal(xs.permute(0, 2, 3, 1), cross_scan_naive(x))
    merged = cross_merge_time_major(ys.flatten(3).permute(0, 3, 1, 2), H, W)  # (B, H, W, C)
    torch.testing.assert_close(merged.permute(0, 3, 1, 2), cross_merge_naive(ys))
    xt = x.permute(0, 2, 3, 1).clone().requires_grad_()
    yt = ys.flatten(3).permute(0, 3, 1, 2).clone().requires_grad_()
    assert torch.autograd.gradcheck(cross_scan_time_major, (xt,))
    assert torch.autograd.gradcheck(lambda y: cross_merge_time_major(y, H, W), (yt,))
