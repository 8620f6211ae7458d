"""selective_scan: every backend, both layouts, against the per-step reference loop.

The ground truth is :func:`selective_scan_naive` differentiated by plain autograd
in float64 (outside the registered operator). The Triton backend runs under
TRITON_INTERPRET=1 on CPU (set in conftest.py), so its cases are tiny; on a CUDA
machine they run on the GPU.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from vmamba_mm.ops import selective_scan
from vmamba_mm.ops.selective_scan import selective_scan_naive

from helpers import DEVICE, has_triton


def make_inputs(batch, dim, L, N, G, *, z=False, D=False, delta_bias=False, bc_3d=False,
                softplus=False, dtype=torch.float64, seed=0, device='cpu'):
    """Random inputs in the ranges the models produce: A = -exp(A_log) < 0 and a
    positive delta (signed before softplus, which makes it positive)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale)

    bc_shape = (batch, N, L) if bc_3d else (batch, G, N, L)
    inputs = dict(
        u=rnd(batch, dim, L),
        delta=rnd(batch, dim, L) if softplus else rnd(batch, dim, L).abs() * 0.5,
        A=-torch.exp(rnd(dim, N, scale=0.5)),
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
        D=rnd(dim) if D else None,
        z=rnd(batch, dim, L) if z else None,
        delta_bias=(rnd(dim) if softplus else rnd(dim).abs() * 0.2) if delta_bias else None,
    )
    return {k: (v.to(device=device, dtype=dtype if k != 'A' else v.dtype).requires_grad_()
                if v is not None else None) for k, v in inputs.items()}


def to_layout(inputs, layout, contiguous):
    """Channel-major inputs as the arguments for ``layout``: time-major views
    (strided), or contiguous copies; ``contiguous=False`` for channel-major gives
    strided views of time-major memory."""
    out = {}
    for k, v in inputs.items():
        if v is None or k in ('A', 'D', 'delta_bias'):
            out[k] = v
            continue
        seq_bc = k in ('B', 'C')
        if layout == 'time_major':
            v = v.permute(0, 3, 1, 2) if seq_bc and v.dim() == 4 else v.transpose(1, 2)
            out[k] = v.contiguous() if contiguous else v
        elif contiguous:
            out[k] = v.contiguous()
        else:  # channel-major strides over time-major memory
            if seq_bc and v.dim() == 4:
                out[k] = v.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            else:
                out[k] = v.transpose(1, 2).contiguous().transpose(1, 2)
    return out


def from_layout(t, layout):
    """A sequence output (out, or a u/delta/z gradient) back in channel-major."""
    return t.transpose(1, 2) if layout == 'time_major' else t


def grad_from_layout(k, g, layout):
    if layout != 'time_major' or k in ('A', 'D', 'delta_bias'):
        return g
    return g.permute(0, 2, 3, 1) if k in ('B', 'C') and g.dim() == 4 else g.transpose(1, 2)


def run(inputs, backend, delta_softplus, return_last_state, cast=None, layout='channel_major',
        contiguous=True):
    """Output, last state and the gradients of a random projection of both, all
    returned in channel-major."""
    leaves = {k: (v.detach().to(cast) if cast is not None else v.detach()).requires_grad_()
              if v is not None else None for k, v in inputs.items()}
    args = to_layout(leaves, layout, contiguous)
    before = {k: v.detach().clone() for k, v in args.items() if v is not None}
    if backend == 'naive':  # the ground truth: plain autograd through the loop, channel-major
        assert layout == 'channel_major'
        naive_args = [args[k].unsqueeze(1) if k in ('B', 'C') and args[k].dim() == 3 else args[k]
                      for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')]
        res = selective_scan_naive(*naive_args, delta_softplus=delta_softplus,
                                   return_last_state=True)
        res = res if return_last_state else res[0]
    else:
        res = selective_scan(**args, delta_softplus=delta_softplus,
                             return_last_state=return_last_state, backend=backend, layout=layout)
    out, last = res if return_last_state else (res, None)
    assert out.is_contiguous(), f'{backend}: output is not contiguous'
    out = from_layout(out, layout)
    gen = torch.Generator().manual_seed(123)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    loss = (out * w).sum()
    if last is not None:
        wl = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)
        loss = loss + (last * wl).sum()
    loss.backward()
    for k, v in before.items():
        assert torch.equal(args[k].detach(), v), f'{backend} modified input {k} in place'
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out, last, grads


def assert_close(name, actual, expected, rtol, atol):
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != {expected.shape}'
    assert torch.isfinite(actual).all(), f'{name}: non-finite values'
    err = (actual - expected).abs()
    tol = atol + rtol * expected.abs()
    worst = (err - tol).argmax()
    assert (err <= tol).all(), (
        f'{name}: max abs err {err.max():.3g}, at worst {actual.flatten()[worst]:.6g} vs '
        f'{expected.flatten()[worst]:.6g} (rtol={rtol}, atol={atol})')


def compare(backend_result, ref_result, rtol, atol):
    out, last, grads = backend_result
    ref_out, ref_last, ref_grads = ref_result
    scale_out = ref_out.abs().max().item() + 1
    assert_close('out', out, ref_out, rtol, atol * scale_out)
    if ref_last is not None:
        assert last is not None and last.shape == ref_last.shape
        assert_close('last_state', last, ref_last, rtol, atol * (ref_last.abs().max().item() + 1))
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert grads[k] is not None, f'no gradient for {k}'
        scale = ref_grads[k].abs().max().item() + 1
        assert_close(f'grad {k}', grads[k], ref_grads[k], rtol, atol * scale)


# (batch, dim, L, N, G, z, D, delta_bias, delta_softplus, bc_3d, return_last_state)
CASES = [
    (2, 8, 37, 16, 2, True, True, True, True, False, True),  # everything, odd L
    (1, 4, 1, 1, 1, False, False, False, False, True, True),  # L = 1
    (2, 6, 64, 1, 3, False, True, False, True, False, False),  # N = 1, G = 3, square L
    (1, 8, 101, 16, 1, True, False, True, False, True, True),  # odd L, 3-D B/C
    (2, 8, 130, 4, 4, True, True, True, True, False, True),  # G = 4, L not a block multiple
    (1, 4, 2, 3, 2, False, False, True, True, False, True),  # L = 2, N not a power of 2
    (2, 8, 50, 1, 4, False, True, True, True, False, True),  # VMamba: N = 1, G = 4
]
CASE_IDS = [f'b{c[0]}d{c[1]}L{c[2]}N{c[3]}G{c[4]}' for c in CASES]
LAYOUTS = ['channel_major', 'time_major']


def _case_inputs(case, dtype=torch.float64, device='cpu', seed=0):
    batch, dim, L, N, G, z, D, bias, softplus, bc_3d, last = case
    inputs = make_inputs(batch, dim, L, N, G, z=z, D=D, delta_bias=bias, bc_3d=bc_3d,
                         softplus=softplus, dtype=dtype, device=device, seed=seed)
    return inputs, softplus, last


def _reference(inputs, softplus, last, dtype):
    """Ground truth in float64 on exactly the values the backend sees (rounded to
    ``dtype``; A in float32 or float64 as given)."""
    rounded = {k: v.detach().to(dtype if k != 'A' else v.dtype).double().cpu()
               if v is not None else None for k, v in inputs.items()}
    return run(rounded, 'naive', softplus, last)


TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (1e-4, 1e-5)}


@pytest.mark.parametrize('contiguous', [True, False], ids=['contiguous', 'strided'])
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=['f64', 'f32'])
@pytest.mark.parametrize('backend', ['reference', 'torch', 'cpu'])
@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_backend_matches_reference(case, backend, dtype, layout, contiguous):
    """Output, last state and every gradient against the loop (float64 autograd)."""
    inputs, softplus, last = _case_inputs(case, seed=hash(case) % 1000)
    ref = _reference(inputs, softplus, last, dtype)
    got = run(inputs, backend, softplus, last, cast=dtype, layout=layout, contiguous=contiguous)
    out, last_state, grads = got
    assert out.dtype == dtype
    for k, g in grads.items():
        assert g.dtype == dtype, f'grad {k} has dtype {g.dtype}'
    compare(got, ref, *TOL[dtype])


@pytest.mark.skipif(not has_triton(), reason='triton not installed')
@pytest.mark.parametrize('case,layout', [
    (CASES[0], 'channel_major'), (CASES[0], 'time_major'), (CASES[2], 'channel_major'),
    (CASES[2], 'time_major'), (CASES[4], 'time_major')],
    ids=[f'{CASE_IDS[i]}-{lay}' for i, lay in ((0, 'cm'), (0, 'tm'), (2, 'cm'), (2, 'tm'),
                                               (4, 'tm'))])
def test_triton_backend_matches_reference(case, layout):
    """float32 on the Triton path (float64 is refused), strided inputs in both layouts."""
    inputs, softplus, last = _case_inputs(case, seed=hash(case) % 1000 + 1)
    ref = _reference(inputs, softplus, last, torch.float32)
    dev = {k: v.detach().to(DEVICE) if v is not None else None for k, v in inputs.items()}
    got = run(dev, 'triton', softplus, last, cast=torch.float32, layout=layout, contiguous=False)
    compare(got, ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('dtype,rtol,atol', [(torch.float32, 1e-4, 1e-5),
                                             (torch.float16, 1e-2, 2e-3),
                                             (torch.bfloat16, 4e-2, 2e-2)])
@pytest.mark.parametrize('backend', ['torch', 'cpu', 'triton'])
def test_low_precision_inputs(backend, dtype, rtol, atol):
    """Inputs in fp32/fp16/bf16 (A stays fp32, as in the models); fp32 state inside."""
    if backend == 'triton' and not has_triton():
        pytest.skip('triton not installed')
    case = (2, 8, 45, 4, 2, True, True, True, True, False, True)
    inputs, softplus, last = _case_inputs(case, seed=7)
    inputs['A'] = inputs['A'].detach().float()
    ref = _reference(inputs, softplus, last, dtype)
    dev = {k: (v.detach().to(device=DEVICE, dtype=dtype if k != 'A' else torch.float32))
           if v is not None else None for k, v in inputs.items()}
    got = run(dev, backend, softplus, last, layout='time_major')
    out, last_state, grads = got
    assert out.dtype == dtype
    assert last_state.dtype == torch.float32
    for k, g in grads.items():
        assert g.dtype == dev[k].dtype, f'grad {k} has dtype {g.dtype}, input has {dev[k].dtype}'
    compare(got, ref, rtol, atol)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('N,G,z', [(1, 4, False), (16, 1, True)])
def test_torch_backend_without_grad_matches_reference(N, G, z, layout):
    """The in-place inference path (no residuals kept, the time steps' buffer reused)."""
    inputs = make_inputs(2, 8, 50, N, G, z=z, D=True, delta_bias=True, softplus=True)
    ref_out, ref_last, _ = run(inputs, 'naive', True, True)
    args = to_layout({k: v.detach() if v is not None else None for k, v in inputs.items()},
                     layout, contiguous=False)
    before = {k: v.clone() for k, v in args.items() if v is not None}
    with torch.no_grad():
        out, last = selective_scan(**args, delta_softplus=True, return_last_state=True,
                                   backend='torch', layout=layout)
    for k, v in before.items():
        assert torch.equal(args[k], v), f'input {k} modified in place'
    assert_close('out', from_layout(out, layout), ref_out, 1e-9, 1e-10)
    assert_close('last_state', last, ref_last, 1e-9, 1e-10)


@pytest.mark.parametrize('backend', ['reference', 'torch', 'cpu'])
def test_backward_twice(backend):
    """Saved tensors are never modified in place: a second backward gives the same grads."""
    inputs = make_inputs(2, 8, 50, 16, 1, z=True, D=True, delta_bias=True, softplus=True)
    leaves = [v for v in inputs.values() if v is not None]
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                               backend=backend)
    loss = (out * torch.randn_like(out)).sum() + (last * torch.randn_like(last)).sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


def _torch_scan_results(seed, N, L, save=True):
    """Output, last state and (with ``save``) all gradients of one torch-backend call."""
    inputs = make_inputs(2, 8, L, N, 2, z=N > 1, D=True, delta_bias=True, softplus=True,
                         dtype=torch.float32, seed=seed)
    if not save:
        with torch.no_grad():
            out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                                       backend='torch', layout='channel_major')
        return [out, last]
    out, last, grads = run(inputs, 'torch', True, True)
    return [out, last, *grads.values()]


def test_torch_backend_scratch_memory_is_private(monkeypatch):
    """The torch backend keeps scratch buffers between calls (CPU, per thread): no
    result aliases them (a later call of another or the same shape leaves earlier
    results untouched), the results equal those computed without kept buffers, and
    threads do not share them."""
    import importlib
    chunked = importlib.import_module('vmamba_mm.ops.selective_scan.chunked')
    cases = [(0, 1, 50), (1, 16, 37), (2, 1, 50, False), (3, 1, 64), (4, 16, 37, False)]
    kept = [_torch_scan_results(*c) for c in cases]
    copies = [[t.clone() for t in r] for r in kept]
    for _ in range(2):  # later calls reuse (and overwrite) the scratch buffers
        for c in cases:
            _torch_scan_results(*c)
    for r, c in zip(kept, copies):
        for t, t0 in zip(r, c):
            assert torch.equal(t, t0), 'a result was overwritten by a later call'
    monkeypatch.setattr(chunked, 'SCRATCH_LIMIT_BYTES', 0)  # nothing kept
    for c, r in zip(cases, copies):
        for t, t0 in zip(_torch_scan_results(*c), r):
            assert torch.equal(t, t0), 'kept scratch buffers change the result'
    monkeypatch.undo()

    import threading
    got, errors = {}, []

    def worker(i):
        try:
            for rep in range(3):
                got[(i, rep)] = _torch_scan_results(*cases[i])
        except Exception as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (i, rep), r in got.items():
        for t, t0 in zip(r, copies[i]):
            assert torch.equal(t, t0), f'thread {i} round {rep}: results differ'


@pytest.mark.parametrize('shape,inner_b', [((2, 3001, 4, 24, 1), (4, 24, 1)),
                                           ((1, 7, 1, 96, 16), (1, 96, 1)),
                                           ((3, 5, 2, 3, 4), (2, 3, 4))])
def test_torch_backend_blocked_sums(shape, inner_b):
    """The torch backend's sums of products over (batch, L), taken block by block in a
    small buffer on CPU, against the float64 product summed in one go (row counts that
    are not a multiple of the block, broadcast inner dims); on another device (meta
    here) the one-go path gives the same shape."""
    import importlib
    chunked = importlib.import_module('vmamba_mm.ops.selective_scan.chunked')
    gen = torch.Generator().manual_seed(sum(shape))
    x, y = (torch.randn(shape, generator=gen) for _ in range(2))
    w = torch.randn(shape[:2] + inner_b, generator=gen)
    got = chunked._sum_products(x, y, w)
    exact = (x.double() * y.double() * w.double()).sum((0, 1))
    assert got.shape == exact.shape
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-4 * exact.abs().max())
    exact2 = (x.double() * y.double()).sum((0, 1))
    assert torch.allclose(chunked._sum_products(x, y).double(), exact2, rtol=1e-5,
                          atol=1e-4 * exact2.abs().max())
    meta = chunked._sum_products(x.to('meta'), y.to('meta'), w.to('meta'))
    assert meta.shape == exact.shape


def test_reference_gradcheck():
    inputs = make_inputs(1, 4, 5, 3, 2, z=True, D=True, delta_bias=True, softplus=True)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        kw = dict(zip(names, tensors))
        out, last = selective_scan_naive(
            kw['u'], kw['delta'], kw['A'], kw['B'], kw['C'], kw['D'], kw['z'],
            kw['delta_bias'], delta_softplus=True, return_last_state=True)
        return out, last

    assert torch.autograd.gradcheck(f, [inputs[k] for k in names])


@pytest.mark.parametrize('layout', LAYOUTS)
def test_torch_backend_gradcheck(layout):
    inputs = make_inputs(2, 4, 11, 2, 2, z=True, D=True, delta_bias=True, softplus=True)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        args = to_layout(dict(zip(names, tensors)), layout, contiguous=False)
        return selective_scan(**args, delta_softplus=True, return_last_state=True,
                              backend='torch', layout=layout)

    assert torch.autograd.gradcheck(f, [inputs[k] for k in names])


def test_reference_matches_explicit_formula():
    """The reference loop against the closed form h_t = sum_s exp(A sum_{s<r<=t} dt_r) dt_s B_s u_s."""
    inputs = make_inputs(1, 3, 6, 2, 1)
    u, delta, A, B, C = (inputs[k].detach() for k in ('u', 'delta', 'A', 'B', 'C'))
    out, last = selective_scan_naive(u, delta, A, B, C, return_last_state=True)
    L = u.shape[-1]
    for t in range(L):
        # h_t[d, n] = sum_{s<=t} exp(A[d, n] * sum_{s<r<=t} delta[d, r]) delta_s B_s u_s
        h = torch.zeros(3, 2, dtype=torch.float64)
        for s in range(t + 1):
            decay = torch.exp(A * delta[0, :, s + 1:t + 1].sum(-1)[:, None])
            h += decay * (delta[0, :, s] * u[0, :, s])[:, None] * B[0, 0, :, s]
        assert torch.allclose(out[0, :, t], (h * C[0, 0, :, t]).sum(-1), atol=1e-12)
    assert torch.allclose(last[0], h, atol=1e-12)


@pytest.mark.parametrize('backend', ['torch', 'cpu', 'triton'])
def test_strong_decay_is_finite(backend):
    """Documented assumption: delta * A <= 0. Huge |A| makes decays underflow to 0, never NaN/inf."""
    if backend == 'triton' and not has_triton():
        pytest.skip('triton not installed')
    dtype = torch.float32 if backend == 'triton' else torch.float64
    inputs = make_inputs(1, 4, 70, 4, 1, delta_bias=True, softplus=True, dtype=dtype)
    with torch.no_grad():
        inputs['A'].copy_(-torch.logspace(-2, 4, 16).view(4, 4))
        inputs['delta_bias'].fill_(3.0)
    ref = _reference(inputs, True, True, dtype)
    dev = {k: v.detach().to(DEVICE, dtype) if v is not None else None for k, v in inputs.items()}
    got = run(dev, backend, True, True)
    compare(got, ref, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-5)


@pytest.mark.parametrize('backend', ['torch', 'cpu'])
def test_positive_decay_follows_reference(backend):
    """delta * A > 0 (outside the models' range): the state grows like in the reference."""
    inputs = make_inputs(1, 4, 40, 2, 1)
    with torch.no_grad():
        inputs['A'].abs_().mul_(0.1)
    ref = run(inputs, 'naive', False, True)
    assert ref[1].abs().max() > 1  # really growing
    compare(run(inputs, backend, False, True, layout='time_major'), ref, rtol=1e-9, atol=1e-10)


def test_matches_softplus_delta_semantics():
    """delta_bias is added before softplus, and D/z apply after the scan (mamba_ssm semantics)."""
    inputs = make_inputs(1, 2, 3, 1, 1, z=True, D=True, delta_bias=True, softplus=True)
    kw = {k: v.detach() for k, v in inputs.items()}
    out = selective_scan(**kw, delta_softplus=True, backend='torch')
    dt = F.softplus(kw['delta'] + kw['delta_bias'][:, None])
    plain = selective_scan(kw['u'], dt, kw['A'], kw['B'], kw['C'], backend='torch')
    expected = (plain + kw['D'][:, None] * kw['u']) * F.silu(kw['z'])
    assert torch.allclose(out, expected, atol=1e-12)


# ------------------------------------------------------------ the registered operator
def _op_args(layout, requires_grad, N=3, G=2, L=9, dtype=torch.float64):
    inputs = make_inputs(2, 4, L, N, G, z=True, D=True, delta_bias=True, softplus=True,
                         dtype=dtype)
    args = to_layout({k: v.detach().requires_grad_(requires_grad) for k, v in inputs.items()},
                     layout, contiguous=False)
    return tuple(args[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias'))


@pytest.mark.parametrize('save', [True, False])
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('backend', ['reference', 'torch', 'cpu', 'triton'])
def test_opcheck(backend, layout, save):
    """torch.library.opcheck: schema, fake (meta) implementation against the real
    one, registered autograd, and AOT dispatch with dynamic shapes."""
    if backend == 'triton' and not has_triton():
        pytest.skip('triton not installed')
    dtype = torch.float32 if backend == 'triton' else torch.float64
    args = _op_args(layout, save, dtype=dtype)
    if backend == 'triton':
        args = tuple(t.detach().to(DEVICE, torch.float32).requires_grad_(save) for t in args)
    torch.library.opcheck(torch.ops.vmamba_mm.selective_scan_fwd.default,
                          (*args, True, layout == 'time_major', backend, save))


def test_raw_operator_without_save_refuses_gradients():
    args = _op_args('channel_major', True)
    with pytest.raises(RuntimeError, match='save=False where a gradient is needed'):
        torch.ops.vmamba_mm.selective_scan_fwd(*args, True, False, 'torch', False)


def test_one_node_in_export_and_compile():
    """torch.export and torch.compile see the operator as one node (not the loops)."""
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, z, bias):
            return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                  layout='time_major')

    args = _op_args('time_major', False, L=40, dtype=torch.float32)
    args = tuple(t.contiguous() for t in args)
    ep = torch.export.export(Scan(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == 'call_function']
    assert targets.count(torch.ops.vmamba_mm.selective_scan_fwd.default) == 1
    import operator
    others = [t for t in targets if t is not torch.ops.vmamba_mm.selective_scan_fwd.default]
    assert all(t is operator.getitem for t in others), targets  # only its outputs unpacked
    compiled = torch.compile(Scan(), fullgraph=True, backend='aot_eager')
    assert torch.equal(compiled(*args), Scan()(*args))


# ------------------------------------------------------------ backend choice and errors
def test_auto_backend_and_env(monkeypatch):
    inputs = make_inputs(1, 4, 9, 2, 1)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    ref = selective_scan(**args, backend='reference')
    monkeypatch.delenv('VMAMBA_MM_SCAN_BACKEND', raising=False)
    assert torch.allclose(selective_scan(**args), ref, atol=1e-12)
    from vmamba_mm.ops.backend import resolve
    assert resolve('selective_scan', None, [args['u']], 'channel_major').name == 'cpu'
    monkeypatch.setenv('VMAMBA_MM_SCAN_BACKEND', 'torch')
    assert resolve('selective_scan', None, [args['u']], 'channel_major').name == 'torch'
    monkeypatch.setenv('VMAMBA_MM_SCAN_BACKEND', 'nope')
    with pytest.raises(ValueError, match="unknown backend 'nope'.*'reference'.*'torch'.*'cpu'.*'triton'"):
        selective_scan(**args)
    # the cross-scan choice is independent
    from vmamba_mm.ops import cross_scan
    assert cross_scan(torch.randn(1, 2, 3, 4)).shape == (1, 4, 2, 12)


def _good(dtype=torch.float32, layout='channel_major'):
    batch, dim, N, L = 2, 4, 3, 5
    if layout == 'time_major':
        return dict(u=torch.randn(batch, L, dim, dtype=dtype),
                    delta=torch.rand(batch, L, dim, dtype=dtype),
                    A=-torch.rand(dim, N), B=torch.randn(batch, L, 2, N, dtype=dtype),
                    C=torch.randn(batch, L, 2, N, dtype=dtype), layout=layout)
    return dict(u=torch.randn(batch, dim, L, dtype=dtype),
                delta=torch.rand(batch, dim, L, dtype=dtype),
                A=-torch.rand(dim, N), B=torch.randn(batch, 2, N, L, dtype=dtype),
                C=torch.randn(batch, 2, N, L, dtype=dtype))


@pytest.mark.parametrize('change,error,match', [
    (dict(u=torch.randn(2, 4)), ValueError, r'u must be \(batch, dim, L\)'),
    (dict(delta=torch.rand(2, 4, 6)), ValueError, 'delta shape'),
    (dict(A=-torch.rand(5, 3)), ValueError, r'A must be \(dim=4, N\)'),
    (dict(A=torch.randn(4, 3, dtype=torch.complex64)), TypeError, 'complex A'),
    (dict(B=torch.randn(2, 2, 4, 5)), ValueError, 'B must be'),
    (dict(C=torch.randn(2, 2, 3, 7)), ValueError, 'C must be'),
    (dict(B=torch.randn(2, 3, 3, 5), C=torch.randn(2, 3, 3, 5)), ValueError, 'not divisible'),
    (dict(C=torch.randn(2, 1, 3, 5)), ValueError, 'different group counts'),
    (dict(D=torch.randn(3)), ValueError, r'D must be \(dim=4,\)'),
    (dict(delta_bias=torch.randn(4, 1)), ValueError, 'delta_bias must be'),
    (dict(z=torch.randn(2, 4, 4)), ValueError, 'z shape'),
    (dict(u=torch.randint(0, 3, (2, 4, 5))), TypeError, 'u has dtype torch.int64'),
    (dict(delta=torch.rand(2, 4, 5, device='meta')), ValueError, 'delta is on meta'),
    (dict(u=torch.randn(2, 4, 0), delta=torch.rand(2, 4, 0), B=torch.randn(2, 2, 3, 0),
          C=torch.randn(2, 2, 3, 0)), ValueError, 'empty sequence'),
    (dict(backend='cuda'), ValueError, "unknown backend 'cuda'; choose one of"),
    (dict(layout='BLD'), ValueError, "unknown layout 'BLD'"),
])
def test_errors(change, error, match):
    kw = _good()
    kw.update(change)
    with pytest.raises(error, match=match):
        selective_scan(**kw)


@pytest.mark.parametrize('change,match', [
    (dict(B=torch.randn(2, 2, 3, 5)), r'B must be \(batch, L, G, N\).*got shape \(2, 2, 3, 5\)'),
    (dict(u=torch.randn(2, 4, 5)), 'delta shape'),
])
def test_time_major_errors_name_the_layout(change, match):
    kw = _good(layout='time_major')
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan(**kw)


def test_triton_refuses_float64_and_names_alternatives():
    if not has_triton():
        pytest.skip('triton not installed')
    with pytest.raises(TypeError, match=r"backend 'triton' takes .*got torch.float64; "
                                        r"backends for torch.float64: \['reference', 'torch', 'cpu'\]"):
        selective_scan(**_good(torch.float64), backend='triton')


def test_triton_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    monkeypatch.delitem(sys.modules, 'vmamba_mm.ops.selective_scan.kernels', raising=False)
    with pytest.raises(ImportError, match="backend 'triton' needs the triton package"):
        selective_scan(**_good(), backend='triton')


def test_triton_on_cpu_tensors_without_interpreter_is_a_clear_error(monkeypatch):
    """Both operators refuse the Triton backend for CPU tensors unless TRITON_INTERPRET=1,
    and say which backends run there."""
    from vmamba_mm.ops import cross_scan
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(ValueError, match=r"selective_scan: backend 'triton' does not run on cpu "
                                         r"tensors.*backends for cpu: \['reference', 'torch', 'cpu'\]"):
        selective_scan(**_good(torch.float32), backend='triton')
    with pytest.raises(ValueError, match="cross_scan: backend 'triton' does not run on cpu"):
        cross_scan(torch.randn(1, 2, 3, 4), backend='triton')


def test_registry_describes_every_backend():
    from vmamba_mm.ops import backends
    table = backends()
    assert set(table) == {'reference', 'torch', 'cpu', 'triton'}
    assert table['torch'].inplace_inference and not table['reference'].inplace_inference
    assert torch.float64 not in table['triton'].dtypes
    assert table['cpu'].devices == ('cpu', ) and set(table['cpu'].modules) == {'selective_scan'}
    for b in table.values():
        assert set(b.modules) <= {'selective_scan', 'cross_scan'}
        assert set(b.layouts) == {'channel_major', 'time_major'}


def test_register_backend_adds_a_backend_to_both_choices(monkeypatch):
    """The newcomer's recipe of docs/ops.md: a backend module with the entry points,
    registered once, usable by name (here it delegates to the reference)."""
    import types
    from vmamba_mm.ops import backend as registry
    from vmamba_mm.ops import Backend, cross_scan, register_backend
    mod = types.ModuleType('my_scan_backend')
    from vmamba_mm.ops.selective_scan import naive
    calls = []

    def scan_fwd(*args):
        calls.append('fwd')
        return naive.scan_fwd(*args)

    mod.scan_fwd, mod.scan_bwd = scan_fwd, naive.scan_bwd
    mod.NUM_RESIDUALS, mod.fake_residuals = 0, naive.fake_residuals
    monkeypatch.setitem(sys.modules, 'my_scan_backend', mod)
    monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
    register_backend(Backend('mine', {'selective_scan': 'my_scan_backend'}, devices=('cpu', ),
                             doc='test backend'))
    with pytest.raises(ValueError, match='already registered'):
        register_backend(Backend('mine', {}, devices=('cpu', )))
    kw = _good()
    out = selective_scan(**kw, backend='mine')
    assert calls == ['fwd'] and torch.equal(out, selective_scan(**kw, backend='reference'))
    with pytest.raises(ValueError, match="cross_scan: unknown backend 'mine'"):
        cross_scan(torch.randn(1, 2, 3, 4), backend='mine')
