"""cross_scan / cross_merge against a direct index construction: every backend, both layouts."""
import sys

import pytest
import torch

from vmamba_mm.ops import cross_merge, cross_scan

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


def _to_layout_x(x, layout):
    """(B, C, H, W) as the layout's input: channels-last (B, H, W, C) for time-major."""
    return x.permute(0, 2, 3, 1) if layout == 'time_major' else x


def _scan_from_layout(y, layout):
    """A scan output back in channel-major (B, 4, C, L)."""
    return y.permute(0, 2, 3, 1) if layout == 'time_major' else y


def _ys_to_layout(ys, layout):
    """(B, 4, C, H, W) as the merge's input: (B, H, W, 4, C) for time-major (a strided view)."""
    return ys.permute(0, 3, 4, 1, 2) if layout == 'time_major' else ys


LAYOUTS = ['channel_major', 'time_major']


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 1, 9), (1, 4, 8, 8), (2, 1, 33, 3)])
def test_cross_scan_forward_backward(backend, shape, layout):
    x = torch.randn(shape, dtype=torch.float32, device=DEVICE, requires_grad=True)
    y = cross_scan(_to_layout_x(x, layout), backend=backend, layout=layout)
    assert y.is_contiguous()
    y = _scan_from_layout(y, layout)
    expected = scan_by_index(x.detach())
    assert y.shape == (shape[0], 4, shape[1], shape[2] * shape[3])
    assert torch.equal(y.detach(), expected)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    B, K, C, L = g.shape
    assert torch.allclose(gx, merge_by_index(g.view(B, K, C, *shape[2:])), atol=1e-6)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 2, 1, 9), (2, 1, 33, 3)])
def test_cross_merge_forward_backward(backend, shape, layout):
    B, C, H, W = shape
    ys = torch.randn(B, 4, C, H, W, device=DEVICE, requires_grad=True)
    out = cross_merge(_ys_to_layout(ys, layout), backend=backend, layout=layout)
    assert out.is_contiguous()
    if layout == 'time_major':
        out = out.permute(0, 3, 1, 2)
    assert out.shape == shape
    assert torch.allclose(out.detach(), merge_by_index(ys.detach()), atol=1e-6)
    g = torch.randn_like(out)
    (gys,) = torch.autograd.grad(out, ys, g)
    assert torch.equal(gys, scan_by_index(g).view(B, 4, C, H, W))


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(backend, dtype, layout):
    if backend == 'triton' and dtype == torch.float64:
        with pytest.raises(TypeError, match="backend 'triton' takes"):
            cross_scan(torch.randn(1, 2, 3, 5, dtype=dtype), backend=backend)
        return
    x = torch.randn(1, 2, 3, 5, device=DEVICE).to(dtype)
    y = _scan_from_layout(cross_scan(_to_layout_x(x, layout), backend=backend, layout=layout),
                          layout)
    assert y.dtype == dtype and torch.equal(y, scan_by_index(x))
    ys = torch.randn(1, 4, 2, 3, 5, device=DEVICE).to(dtype)
    out = cross_merge(_ys_to_layout(ys, layout), backend=backend, layout=layout)
    if layout == 'time_major':
        out = out.permute(0, 3, 1, 2)
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-2
    assert torch.allclose(out.double(), merge_by_index(ys.double()), atol=tol, rtol=tol)


def test_merge_of_scan_counts_each_position_four_times():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    assert torch.allclose(cross_merge(cross_scan(x).view(2, 4, 3, 4, 6)), 4 * x)
    xt = x.permute(0, 2, 3, 1)
    merged = cross_merge(cross_scan(xt, layout='time_major').view(2, 4, 6, 4, 3),
                         layout='time_major')
    assert torch.allclose(merged, 4 * xt)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', ['reference', 'torch'])
def test_gradcheck_and_gradgradcheck(backend, layout):
    """Each operator's backward is the other operator: first and second derivatives."""
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    x = _to_layout_x(x, layout).detach().requires_grad_()
    scan = (lambda t: cross_scan(t, backend=backend, layout=layout))  # noqa: E731
    assert torch.autograd.gradcheck(scan, (x,))
    assert torch.autograd.gradgradcheck(scan, (x,))
    ys = torch.randn(1, 4, 2, 3, 4, dtype=torch.float64)
    ys = _ys_to_layout(ys, layout).detach().requires_grad_()
    merge = (lambda t: cross_merge(t, backend=backend, layout=layout))  # noqa: E731
    assert torch.autograd.gradcheck(merge, (ys,))
    assert torch.autograd.gradgradcheck(merge, (ys,))


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_opcheck(backend, layout):
    """torch.library.opcheck on both operators: schema, fake implementation,
    registered autograd, AOT dispatch with dynamic shapes."""
    dtype = torch.float32 if backend == 'triton' else torch.float64
    x = _to_layout_x(torch.randn(2, 3, 4, 5, dtype=dtype, device=DEVICE), layout)
    tm = layout == 'time_major'
    torch.library.opcheck(torch.ops.vmamba_mm.cross_scan.default,
                          (x.requires_grad_(), tm, backend))
    ys = _ys_to_layout(torch.randn(2, 4, 3, 4, 5, dtype=dtype, device=DEVICE), layout)
    torch.library.opcheck(torch.ops.vmamba_mm.cross_merge.default,
                          (ys.requires_grad_(), tm, backend))


@pytest.mark.parametrize('fn,arg,kw,error,match', [
    (cross_scan, torch.randn(2, 3, 4), {}, ValueError, r'x must be \(B, C, H, W\)'),
    (cross_scan, torch.randn(2, 3, 4), dict(layout='time_major'), ValueError,
     r'x must be \(B, H, W, C\)'),
    (cross_scan, torch.randint(0, 2, (1, 2, 3, 4)), {}, TypeError, 'floating dtype'),
    (cross_scan, torch.randn(1, 2, 3, 4), dict(layout='hwc'), ValueError, "unknown layout 'hwc'"),
    (cross_merge, torch.randn(1, 3, 2, 4, 4), {}, ValueError, r'K = 4 directions'),
    (cross_merge, torch.randn(1, 4, 2, 16), {}, ValueError, r'ys must be \(B, 4, C, H, W\)'),
    (cross_merge, torch.randn(1, 4, 4, 3, 2), dict(layout='time_major'), ValueError,
     r'ys must be \(B, H, W, 4, C\)'),
    (cross_merge, [1.0], {}, TypeError, 'must be a Tensor'),
])
def test_errors(fn, arg, kw, error, match):
    with pytest.raises(error, match=match):
        fn(arg, **kw)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of: 'reference'"):
        cross_scan(torch.randn(1, 1, 2, 2), backend='cuda')


def test_env_variable_is_the_cross_scan_s_own(monkeypatch):
    """VMAMBA_MM_CROSS_SCAN_BACKEND drives cross-scan/merge, not the selective scan."""
    monkeypatch.setenv('VMAMBA_MM_CROSS_SCAN_BACKEND', 'nope')
    with pytest.raises(ValueError, match="cross_scan: unknown backend 'nope'"):
        cross_scan(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="cross_scan: unknown backend 'nope'"):
        cross_merge(torch.randn(1, 4, 1, 2, 2))
    from vmamba_mm.ops import selective_scan
    u = torch.randn(1, 2, 3)
    assert selective_scan(u, u.abs(), -torch.ones(2, 1), torch.randn(1, 1, 3),
                          torch.randn(1, 1, 3)).shape == u.shape


def test_triton_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    monkeypatch.delitem(sys.modules, 'vmamba_mm.ops.cross_scan.kernels', raising=False)
    with pytest.raises(ImportError, match="backend 'triton' needs the triton package"):
        cross_scan(torch.randn(1, 1, 2, 2), backend='triton')
