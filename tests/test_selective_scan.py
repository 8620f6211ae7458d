"""selective_scan: every backend against the per-step reference loop (float64).

The Triton backend runs under TRITON_INTERPRET=1 on CPU (set in conftest.py),
so its cases are tiny; on a CUDA machine they run on the GPU.
"""
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


def run(inputs, backend, delta_softplus, return_last_state, cast=None):
    """Output, last state and the gradients of a random projection of both."""
    args = {k: (v.detach().to(cast) if cast is not None else v.detach()).requires_grad_()
            if v is not None else None for k, v in inputs.items()}
    before = {k: v.detach().clone() for k, v in args.items() if v is not None}
    res = selective_scan(**args, delta_softplus=delta_softplus,
                         return_last_state=return_last_state, backend=backend)
    out, last = res if return_last_state else (res, None)
    gen = torch.Generator().manual_seed(123)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    loss = (out * w).sum()
    if last is not None:
        wl = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)
        loss = loss + (last * wl).sum()
    loss.backward()
    for k, v in before.items():
        assert torch.equal(args[k].detach(), v), f'{backend} modified input {k} in place'
    grads = {k: v.grad for k, v in args.items() if v is not None}
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
    (2, 6, 64, 1, 3, False, True, False, True, False, False),  # N = 1, G = 3
    (1, 8, 101, 16, 1, True, False, True, False, True, True),  # odd L, (batch, N, L) B/C
    (2, 8, 130, 4, 4, True, True, True, True, False, True),  # G = 4, L not a block multiple
    (1, 4, 2, 3, 2, False, False, True, True, False, True),  # L = 2, N not a power of 2
    (2, 8, 50, 1, 4, False, True, True, True, False, True),  # VMamba: N = 1, G = 4, padded L
]
CASE_IDS = [f'b{c[0]}d{c[1]}L{c[2]}N{c[3]}G{c[4]}' for c in CASES]


def _case_inputs(case, dtype=torch.float64, device='cpu', seed=0):
    batch, dim, L, N, G, z, D, bias, softplus, bc_3d, last = case
    inputs = make_inputs(batch, dim, L, N, G, z=z, D=D, delta_bias=bias, bc_3d=bc_3d,
                         softplus=softplus, dtype=dtype, device=device, seed=seed)
    return inputs, softplus, last


@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_torch_backend_matches_reference_float64(case):
    inputs, softplus, last = _case_inputs(case, seed=hash(case) % 1000)
    ref = run(inputs, 'reference', softplus, last)
    got = run(inputs, 'torch', softplus, last)
    compare(got, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('dtype,rtol,atol', [(torch.float32, 1e-4, 1e-5),
                                             (torch.float16, 1e-2, 2e-3),
                                             (torch.bfloat16, 4e-2, 2e-2)])
@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_low_precision_inputs(backend, dtype, rtol, atol):
    """Inputs in fp32/fp16/bf16 (A stays fp32, as in the models); fp32 state inside."""
    if backend == 'triton' and not has_triton():
        pytest.skip('triton not installed')
    case = (2, 8, 45, 4, 2, True, True, True, True, False, True)
    inputs, softplus, last = _case_inputs(case, seed=7)
    # The reference sees exactly the rounded values, in float64.
    rounded = {k: (v.detach().to(dtype).double() if k != 'A' else v.detach().float().double())
               if v is not None else None for k, v in inputs.items()}
    ref = run(rounded, 'reference', softplus, last)
    dev = {k: (v.detach().to(device=DEVICE, dtype=dtype if k != 'A' else torch.float32))
           if v is not None else None for k, v in inputs.items()}
    got = run(dev, backend, softplus, last)
    out, last_state, grads = got
    assert out.dtype == dtype
    assert last_state.dtype == torch.float32
    for k, g in grads.items():
        assert g.dtype == dev[k].dtype, f'grad {k} has dtype {g.dtype}, input has {dev[k].dtype}'
    compare(got, ref, rtol, atol)


@pytest.mark.skipif(not has_triton(), reason='triton not installed')
@pytest.mark.parametrize('case', CASES, ids=CASE_IDS)
def test_triton_backend_matches_reference(case):
    """float32 on the Triton path (float64 is refused) against the float64 reference."""
    inputs, softplus, last = _case_inputs(case, seed=hash(case) % 1000 + 1)
    ref = run({k: v.detach().float().double() if v is not None else None
               for k, v in inputs.items()}, 'reference', softplus, last)
    dev = {k: v.detach().to(DEVICE, torch.float32) if v is not None else None
           for k, v in inputs.items()}
    got = run(dev, 'triton', softplus, last)
    compare(got, ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('N,G,z', [(1, 4, False), (16, 1, True)])
def test_torch_backend_without_grad_matches_reference(N, G, z):
    """The inference path (no graph: states not kept, C applied to them in place)."""
    inputs = make_inputs(2, 8, 50, N, G, z=z, D=True, delta_bias=True, softplus=True)
    args = {k: v.detach() if v is not None else None for k, v in inputs.items()}
    ref_out, ref_last = selective_scan(**args, delta_softplus=True, return_last_state=True,
                                       backend='reference')
    with torch.no_grad():
        out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                                   backend='torch')
    assert_close('out', out, ref_out, 1e-9, 1e-10)
    assert_close('last_state', last, ref_last, 1e-9, 1e-10)


@pytest.mark.parametrize('N,G,z', [(1, 4, False), (16, 1, True)])
def test_torch_backend_backward_twice(N, G, z):
    """Saved tensors are never modified in place: a second backward gives the same grads."""
    inputs = make_inputs(2, 8, 50, N, G, z=z, D=True, delta_bias=True, softplus=True)
    leaves = [v for v in inputs.values() if v is not None]
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                               backend='torch')
    loss = (out * torch.randn_like(out)).sum() + (last * torch.randn_like(last)).sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


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


def test_torch_backend_gradcheck():
    inputs = make_inputs(2, 4, 11, 2, 2, z=True, D=True, delta_bias=True, softplus=True)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True,
                              return_last_state=True, backend='torch')

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


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_strong_decay_is_finite(backend):
    """Documented assumption: delta * A <= 0. Huge |A| makes decays underflow to 0, never NaN/inf."""
    if backend == 'triton' and not has_triton():
        pytest.skip('triton not installed')
    dtype = torch.float64 if backend == 'torch' else torch.float32
    inputs = make_inputs(1, 4, 70, 4, 1, delta_bias=True, softplus=True, dtype=dtype)
    with torch.no_grad():
        inputs['A'].copy_(-torch.logspace(-2, 4, 16).view(4, 4))
        inputs['delta_bias'].fill_(3.0)
    ref = run({k: v.detach().double() if v is not None else None for k, v in inputs.items()},
              'reference', True, True)
    dev = {k: v.detach().to(DEVICE, dtype) if v is not None else None for k, v in inputs.items()}
    got = run(dev, backend, True, True)
    compare(got, ref, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-5)


def test_positive_decay_follows_reference():
    """delta * A > 0 (outside the models' range): the state grows like in the reference."""
    inputs = make_inputs(1, 4, 40, 2, 1)
    with torch.no_grad():
        inputs['A'].abs_().mul_(0.1)
    ref = run(inputs, 'reference', False, True)
    assert ref[1].abs().max() > 1  # really growing
    compare(run(inputs, 'torch', False, True), ref, rtol=1e-9, atol=1e-10)


def test_auto_backend_and_env(monkeypatch):
    inputs = make_inputs(1, 4, 9, 2, 1)
    args = {k: v.detach() for k, v in inputs.items() if v is not None}
    ref = selective_scan(**args, backend='reference')
    monkeypatch.delenv('VMAMBA_MM_SCAN_BACKEND', raising=False)
    assert torch.allclose(selective_scan(**args), ref, atol=1e-12)
    monkeypatch.setenv('VMAMBA_MM_SCAN_BACKEND', 'nope')
    with pytest.raises(ValueError, match='unknown backend'):
        selective_scan(**args)


def _good(dtype=torch.float32):
    batch, dim, N, L = 2, 4, 3, 5
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
    (dict(backend='cuda'), ValueError, 'unknown backend'),
])
def test_errors(change, error, match):
    kw = _good()
    kw.update(change)
    with pytest.raises(error, match=match):
        selective_scan(**kw)


def test_triton_refuses_float64():
    if not has_triton():
        pytest.skip('triton not installed')
    kw = _good(torch.float64)
    with pytest.raises(TypeError, match='triton supports fp16/bf16/fp32'):
        selective_scan(**kw, backend='triton')


def test_triton_missing_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    monkeypatch.delitem(sys.modules, 'vmamba_mm.ops.selective_scan.kernels', raising=False)
    with pytest.raises(ImportError, match="backend 'triton' needs the triton package"):
        selective_scan(**_good(), backend='triton')


def test_matches_softplus_delta_semantics():
    """delta_bias is added before softplus, and D/z apply after the scan (mamba_ssm semantics)."""
    inputs = make_inputs(1, 2, 3, 1, 1, z=True, D=True, delta_bias=True, softplus=True)
    kw = {k: v.detach() for k, v in inputs.items()}
    out = selective_scan(**kw, delta_softplus=True, backend='torch')
    dt = F.softplus(kw['delta'] + kw['delta_bias'][:, None])
    plain = selective_scan(kw['u'], dt, kw['A'], kw['B'], kw['C'], backend='torch')
    expected = (plain + kw['D'][:, None] * kw['u']) * F.silu(kw['z'])
    assert torch.allclose(out, expected, atol=1e-12)


# ------------------------------------------------------ time-major inference path
# (batch, dim, L, N, G): square and non-square L (chunked body + step-by-step tail).
TIME_MAJOR_CASES = [(1, 4, 1, 1, 1), (2, 8, 23, 1, 4), (2, 6, 49, 1, 2), (1, 8, 50, 3, 2),
                    (2, 4, 2, 2, 1), (1, 8, 130, 1, 4)]


@pytest.mark.parametrize('case', TIME_MAJOR_CASES, ids=[f'b{c[0]}d{c[1]}L{c[2]}N{c[3]}G{c[4]}'
                                                        for c in TIME_MAJOR_CASES])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_time_major_inference_matches_reference(case, dtype):
    """The in-place inference scan on (batch, L, dim) tensors equals the reference loop."""
    from vmamba_mm.ops.selective_scan.chunked import selective_scan_time_major
    batch, dim, L, N, G = case
    kw = {k: v.detach() for k, v in make_inputs(batch, dim, L, N, G, D=True, delta_bias=True,
                                                 softplus=True, seed=L).items() if v is not None}
    expected = selective_scan_naive(kw['u'], kw['delta'], kw['A'], kw['B'], kw['C'], kw['D'], None,
                                    kw['delta_bias'], True, False)
    tm = {k: v.to(dtype) for k, v in kw.items()}
    B_tm, C_tm = (tm[k].permute(0, 3, 1, 2) for k in ('B', 'C'))  # (batch, L, G, N), strided
    delta = tm['delta'].transpose(1, 2).contiguous()
    out = selective_scan_time_major(tm['u'].transpose(1, 2), delta, tm['A'], B_tm, C_tm, tm['D'],
                                    delta_bias=tm['delta_bias'], delta_softplus=True)
    assert out.shape == (batch, L, dim) and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert_close('out', out.transpose(1, 2), expected, tol, tol * (expected.abs().max() + 1))


@pytest.mark.parametrize('case', TIME_MAJOR_CASES[1:4], ids=['L23', 'L49', 'L50N3'])
def test_time_major_autograd_matches_reference(case):
    """With gradients the time-major entry is the chunked autograd Function:
    output and every gradient against the reference loop (float64)."""
    from vmamba_mm.ops.selective_scan.chunked import selective_scan_time_major
    batch, dim, L, N, G = case
    inputs = make_inputs(batch, dim, L, N, G, D=True, delta_bias=True, softplus=True, seed=L)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    ref = run(inputs, 'reference', True, False)
    args = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan_time_major(
        args['u'].transpose(1, 2), args['delta'].transpose(1, 2), args['A'],
        args['B'].permute(0, 3, 1, 2), args['C'].permute(0, 3, 1, 2), args['D'],
        delta_bias=args['delta_bias'], delta_softplus=True).transpose(1, 2)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    (out * w).sum().backward()
    assert torch.equal(args['delta'].detach(), inputs['delta'].detach()), 'delta modified'
    compare((out, None, {k: v.grad for k, v in args.items()}), ref, 1e-10, 1e-10)


def test_softplus_is_exact_to_a_few_ulps():
    """The vectorised in-place softplus against float64 log1p(exp(x)), over the whole
    range: tiny (x << 0), around 0, large, beyond the threshold and +-inf."""
    from vmamba_mm.ops.selective_scan.chunked import _softplus_
    x = torch.cat([torch.linspace(-90, 90, 20001), torch.randn(20000) * 5,
                   torch.tensor([-float('inf'), float('inf'), 0.0, 20.0, 20.5, -20.0])])
    got = _softplus_(x.clone())
    exact = F.softplus(x.double(), threshold=1000)
    exact[x == float('inf')] = float('inf')
    finite = torch.isfinite(exact)
    assert torch.equal(got[~finite], exact[~finite].float())
    ulp = torch.finfo(torch.float32).eps * exact[finite].abs().clamp(min=torch.finfo(torch.float32).tiny)
    err_ulps = ((got[finite].double() - exact[finite]).abs() / ulp).max()
    assert err_ulps <= 4, f'softplus off by {err_ulps:.1f} ulps'


def test_triton_on_cpu_tensors_without_interpreter_is_a_clear_error(monkeypatch):
    """Both Triton operators refuse CPU tensors unless TRITON_INTERPRET=1 (one shared check)."""
    if not has_triton():
        pytest.skip('triton not installed')
    from vmamba_mm.ops import cross_scan
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(RuntimeError, match='selective_scan: backend triton needs CUDA tensors'):
        selective_scan(**_good(torch.float32), backend='triton')
    with pytest.raises(RuntimeError, match='cross_scan: backend triton needs CUDA tensors'):
        cross_scan(torch.randn(1, 2, 3, 4), backend='triton')
