"""The Triton kernels' entry points against the reference loops.

``scan_fwd`` / ``scan_bwd`` (selective scan) and ``cross_scan_fwd`` /
``cross_merge_fwd`` are called directly, in both layouts, on contiguous and
strided inputs. The reference is the per-step loop of ``naive.py`` in float64
on the float32-rounded inputs; its gradients come from autograd through the
loop. On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set by conftest.py): tiny shapes.
"""
import pytest
import torch

from helpers import DEVICE, has_triton

pytestmark = pytest.mark.skipif(not has_triton(), reason='triton not installed')


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _scan_inputs(batch, dim, L, N, G, z, D, seed):
    """Channel-major float64 inputs in the models' ranges (A < 0, signed delta
    before softplus), rounded to float32."""
    gen = torch.Generator().manual_seed(seed)
    t = dict(u=_randn(gen, batch, dim, L), delta=_randn(gen, batch, dim, L),
             A=-torch.exp(_randn(gen, dim, N) * 0.5),
             B=_randn(gen, batch, G, N, L), C=_randn(gen, batch, G, N, L),
             D=_randn(gen, dim) if D else None,
             z=_randn(gen, batch, dim, L) if z else None,
             delta_bias=_randn(gen, dim) * 0.5)
    return {k: v.float().double() if v is not None else None for k, v in t.items()}


def _seq_to_layout(t, time_major, strided):
    """A channel-major (batch, dim, L) tensor in the kernel's layout, as float32.

    Strided: stored in the other layout's order inside a wider buffer (a view
    with no unit stride along the sequence, and a batch stride with padding)."""
    t = t.float()
    if time_major:
        if not strided:
            return t.transpose(1, 2).contiguous()
        buf = torch.zeros(t.shape[0], t.shape[1] + 3, t.shape[2])
        buf[:, :t.shape[1]] = t
        return buf[:, :t.shape[1]].transpose(1, 2)  # (batch, L, dim), stride 1 along L
    if not strided:
        return t.contiguous()
    buf = torch.zeros(t.shape[0], t.shape[2], t.shape[1] + 3)
    buf[:, :, :t.shape[1]] = t.transpose(1, 2)
    return buf[:, :, :t.shape[1]].transpose(1, 2)  # (batch, dim, L), stride 1 along dim


def _seq_from_layout(t, time_major):
    return t.transpose(1, 2) if time_major else t


def _bc_to_layout(t, time_major, strided):
    """(batch, G, N, L) -> the layout's B/C, float32; strided: the other layout's storage."""
    t = t.float()
    if time_major:
        return t.permute(0, 3, 1, 2) if strided else t.permute(0, 3, 1, 2).contiguous()
    return t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) if strided else t.contiguous()


def _bc_from_layout(t, time_major):
    return t.permute(0, 2, 3, 1) if time_major else t


def _assert_close(name, got, ref, rtol=2e-4, atol=2e-5):
    got, ref = got.detach().double().cpu(), ref.detach().double()
    assert got.shape == ref.shape, f'{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}'
    scale = ref.abs().max().item() + 1
    err = (got - ref).abs()
    assert (err <= atol * scale + rtol * ref.abs()).all(), (
        f'{name}: max abs err {err.max().item():.3g} (scale {scale:.3g})')


# (batch, dim, L, N, G, z, D): the interpreter's BLOCK_L is 16, so every L
# below ends in a partial chunk.
SCAN_CASES = [(2, 8, 21, 4, 2, True, True), (1, 4, 19, 1, 1, False, False),
              (2, 8, 37, 1, 2, True, False), (1, 4, 7, 4, 1, False, True)]


@pytest.mark.parametrize('strided', [False, True], ids=['contiguous', 'strided'])
@pytest.mark.parametrize('time_major', [False, True], ids=['channel_major', 'time_major'])
@pytest.mark.parametrize('case', SCAN_CASES,
                         ids=[f'b{c[0]}d{c[1]}L{c[2]}N{c[3]}G{c[4]}{"z" if c[5] else ""}'
                              f'{"D" if c[6] else ""}' for c in SCAN_CASES])
def test_scan_fwd_bwd_match_reference(case, time_major, strided):
    from vmamba_mm.ops.selective_scan.kernels import scan_bwd, scan_fwd, states_shape
    from vmamba_mm.ops.selective_scan.naive import selective_scan_naive
    batch, dim, L, N, G, z, D = case
    ref_in = _scan_inputs(batch, dim, L, N, G, z, D, seed=sum(case) + 7 * time_major)
    leaves = {k: v.clone().requires_grad_() for k, v in ref_in.items() if v is not None}
    ref_out, ref_last = selective_scan_naive(
        leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], leaves.get('D'),
        leaves.get('z'), leaves['delta_bias'], delta_softplus=True, return_last_state=True)
    gen = torch.Generator().manual_seed(1)
    dout, dlast = _randn(gen, *ref_out.shape), _randn(gen, *ref_last.shape)
    ref_grads = dict(zip(leaves, torch.autograd.grad(
        (ref_out * dout).sum() + (ref_last * dlast).sum(), list(leaves.values()))))

    def seq(t):
        return _seq_to_layout(t, time_major, strided).to(DEVICE) if t is not None else None

    def bc(t):
        return _bc_to_layout(t, time_major, strided).to(DEVICE)

    args = dict(u=seq(ref_in['u']), delta=seq(ref_in['delta']), A=ref_in['A'].float().to(DEVICE),
                B=bc(ref_in['B']), C=bc(ref_in['C']),
                D=ref_in['D'].float().to(DEVICE) if D else None, z=seq(ref_in['z']),
                delta_bias=ref_in['delta_bias'].float().to(DEVICE))
    before = {k: v.clone() for k, v in args.items() if v is not None}
    out, last, (states, ) = scan_fwd(**args, delta_softplus=True, time_major=time_major,
                                     save=True)
    assert out.is_contiguous() and out.dtype == torch.float32 and out.shape == args['u'].shape
    assert last.dtype == torch.float32 and tuple(states.shape) == states_shape(batch, dim, L, N)
    _assert_close('out', _seq_from_layout(out, time_major), ref_out)
    _assert_close('last_state', last, ref_last)
    _, last_nosave, kept = scan_fwd(**args, delta_softplus=True, time_major=time_major,
                                    save=False)
    assert kept == ()
    assert torch.equal(last_nosave, last)

    grads = scan_bwd(seq(dout), dlast.float().to(DEVICE), **args, states=states,
                     delta_softplus=True, time_major=time_major)
    for k, v in before.items():
        assert torch.equal(args[k], v), f'input {k} modified'
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
    for name, g in zip(names, grads):
        if args[name] is None:
            assert g is None, f'grad {name} for an absent input'
            continue
        assert g.shape == args[name].shape and g.dtype == args[name].dtype, name
        assert g.is_contiguous(), f'grad {name} not contiguous in the layout'
        if name in ('u', 'delta', 'z'):
            g = _seq_from_layout(g, time_major)
        elif name in ('B', 'C'):
            g = _bc_from_layout(g, time_major)
        _assert_close(f'grad {name}', g, ref_grads[name])


@pytest.mark.parametrize('time_major', [False, True], ids=['channel_major', 'time_major'])
def test_scan_bwd_without_dlast_and_low_precision(time_major):
    """bf16 sequences (fp32 A/D/bias), no last-state gradient, non-contiguous dout."""
    from vmamba_mm.ops.selective_scan.kernels import scan_bwd, scan_fwd
    from vmamba_mm.ops.selective_scan.naive import selective_scan_naive
    batch, dim, L, N, G = 1, 4, 18, 4, 2
    ref_in = _scan_inputs(batch, dim, L, N, G, z=True, D=True, seed=3)
    for k in ('u', 'delta', 'B', 'C', 'z'):  # the values the kernel sees
        ref_in[k] = ref_in[k].to(torch.bfloat16).double()
    leaves = {k: v.clone().requires_grad_() for k, v in ref_in.items()}
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
    ref_out = selective_scan_naive(*(leaves[k] for k in names), delta_softplus=True)
    dout = _randn(torch.Generator().manual_seed(2), *ref_out.shape)
    ref_grads = torch.autograd.grad((ref_out * dout).sum(), list(leaves.values()))
    seq = lambda t: _seq_to_layout(t, time_major, False).to(DEVICE, torch.bfloat16)  # noqa: E731
    bc = lambda t: _bc_to_layout(t, time_major, False).to(DEVICE, torch.bfloat16)  # noqa: E731
    args = dict(u=seq(ref_in['u']), delta=seq(ref_in['delta']), A=ref_in['A'].float(),
                B=bc(ref_in['B']), C=bc(ref_in['C']), D=ref_in['D'].float(), z=seq(ref_in['z']),
                delta_bias=ref_in['delta_bias'].float())
    out, _, (states, ) = scan_fwd(**args, delta_softplus=True, time_major=time_major, save=True)
    assert out.dtype == torch.bfloat16
    _assert_close('out', _seq_from_layout(out, time_major), ref_out, rtol=2e-2, atol=1e-2)
    # dout as a transposed copy: non-contiguous in the layout.
    dout_l = _seq_to_layout(dout, time_major, True).to(DEVICE, torch.bfloat16)
    assert not dout_l.is_contiguous()
    grads = scan_bwd(dout_l, None, **args, states=states, delta_softplus=True,
                     time_major=time_major)
    for name, g, ref in zip(leaves, grads, ref_grads):
        assert g.dtype == args[name].dtype, name
        if name in ('u', 'delta', 'z'):
            g = _seq_from_layout(g, time_major)
        elif name in ('B', 'C'):
            g = _bc_from_layout(g, time_major)
        _assert_close(f'grad {name}', g.float(), ref, rtol=3e-2, atol=2e-2)


def test_scan_refuses_float64_and_plain_cpu(monkeypatch):
    from vmamba_mm.ops.selective_scan.kernels import scan_fwd
    u = torch.randn(1, 2, 3, dtype=torch.float64)
    B = torch.randn(1, 1, 1, 3)
    with pytest.raises(TypeError, match='u is torch.float64'):
        scan_fwd(u, u, torch.randn(2, 1), B, B, None, None, None, False, False, False)
    if not torch.cuda.is_available():
        monkeypatch.delenv('TRITON_INTERPRET')
        with pytest.raises(RuntimeError, match='needs CUDA tensors'):
            scan_fwd(u.float(), u.float(), torch.randn(2, 1), B, B, None, None, None, False,
                     False, False)


# ------------------------------------------------------------- cross-scan / merge
CROSS_SHAPES = [(2, 3, 5, 7), (1, 4, 6, 6), (1, 2, 1, 9)]


@pytest.mark.parametrize('strided', [False, True], ids=['contiguous', 'strided'])
@pytest.mark.parametrize('time_major', [False, True], ids=['channel_major', 'time_major'])
@pytest.mark.parametrize('shape', CROSS_SHAPES, ids=['x'.join(map(str, s)) for s in CROSS_SHAPES])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16], ids=['fp32', 'fp16'])
def test_cross_scan_and_merge_match_reference(shape, time_major, strided, dtype):
    from vmamba_mm.ops.cross_scan.kernels import cross_merge_fwd, cross_scan_fwd
    from vmamba_mm.ops.cross_scan.naive import cross_merge_naive, cross_scan_naive
    B, C, H, W = shape
    gen = torch.Generator().manual_seed(B + C + H + W)
    x = torch.randn(B, C, H, W, generator=gen).to(dtype)
    ys = torch.randn(B, 4, C, H, W, generator=gen).to(dtype)
    ref_scan = cross_scan_naive(x.double())  # (B, 4, C, L)
    ref_merge = cross_merge_naive(ys.double())  # (B, C, H, W)
    if time_major:
        x_in = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        ys_in = ys.permute(0, 3, 4, 1, 2)  # (B, H, W, 4, C)
    else:
        x_in, ys_in = x, ys
    if strided:  # stored in the other order
        x_in = x_in.transpose(1, 2).contiguous().transpose(1, 2)
        ys_in = ys_in.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        x_in, ys_in = x_in.contiguous(), ys_in.contiguous()
    scanned = cross_scan_fwd(x_in.to(DEVICE), time_major)
    merged = cross_merge_fwd(ys_in.to(DEVICE), time_major)
    assert scanned.is_contiguous() and merged.is_contiguous()
    assert scanned.dtype == merged.dtype == dtype
    if time_major:
        assert scanned.shape == (B, H * W, 4, C) and merged.shape == (B, H, W, C)
        scanned, merged = scanned.permute(0, 2, 3, 1), merged.permute(0, 3, 1, 2)
    else:
        assert scanned.shape == (B, 4, C, H * W) and merged.shape == (B, C, H, W)
    assert torch.equal(scanned.double().cpu(), ref_scan)  # a pure permutation: exact
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(merged.double().cpu(), ref_merge, rtol=tol, atol=tol)
