"""The export decompositions of the scan operators against the reference (float64).

``selective_scan_decomposed`` and ``cross_scan_decomposed`` / ``cross_merge_decomposed``
are what the ONNX export lowers the registered operators to; here they are checked
forward and backward against the per-step loop and the naive cross-scan, in both
layouts, and traced by ``torch.export`` once for a symbolic sequence length.
"""
import itertools

import pytest
import torch

from vmamba_mm.ops.cross_scan.decomposition import cross_merge_decomposed, cross_scan_decomposed
from vmamba_mm.ops.cross_scan.naive import cross_merge_naive, cross_scan_naive
from vmamba_mm.ops.selective_scan.decomposition import (CHUNK, SPAN,
                                                        selective_scan_decomposed)
from vmamba_mm.ops.selective_scan.naive import selective_scan_naive


def make_inputs(batch, dim, L, N, G, D, z, bias, seed=0):
    """Channel-major float64 inputs in the models' ranges (A < 0, delta signed before
    softplus), each a leaf that requires a gradient."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()

    return dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L),
                A=(-torch.exp(torch.randn(dim, N, generator=gen, dtype=torch.float64) * 0.5)
                   ).requires_grad_(),
                B=rnd(batch, G, N, L), C=rnd(batch, G, N, L),
                D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
                delta_bias=rnd(dim, scale=0.5) if bias else None)


def to_time_major(inputs):
    """The same values in the time-major layout (leaves of their own)."""
    perm = dict(u=(0, 2, 1), delta=(0, 2, 1), z=(0, 2, 1), B=(0, 3, 1, 2), C=(0, 3, 1, 2))
    return {k: None if v is None else
            (v.detach().permute(*perm[k]) if k in perm else v.detach()).clone().requires_grad_()
            for k, v in inputs.items()}


def outputs_and_grads(fn, inputs, seed=1):
    """(out, last state, {name: gradient}) of a random projection of both outputs."""
    out, last = fn(**inputs)
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(last.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * w_out).sum() + (last * w_last).sum(),
                                [v for v in inputs.values() if v is not None])
    names = [k for k, v in inputs.items() if v is not None]
    return out, last, dict(zip(names, grads))


LENGTHS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, SPAN - 1, SPAN, SPAN + 1,
           3 * SPAN + 5]
# (N, G, D, z, delta_bias): all 32 combinations, spread over the lengths below.
FLAGS = list(itertools.product((1, 4), (1, 2), (False, True), (False, True), (False, True)))
CASES = [(L, *FLAGS[(i * 7 + j) % len(FLAGS)]) for i, L in enumerate(LENGTHS)
         for j in range(4)]


@pytest.mark.parametrize('time_major', [False, True], ids=['channel_major', 'time_major'])
@pytest.mark.parametrize('case', CASES, ids=[
    f'L{c[0]}-N{c[1]}-G{c[2]}' + ''.join(f'-{n}' for n, on in zip(('D', 'z', 'bias'), c[3:])
                                         if on) for c in CASES])
def test_selective_scan_decomposed_matches_reference(case, time_major):
    L, N, G, D, z, bias = case
    inputs = make_inputs(2, 4, L, N, G, D, z, bias, seed=L)
    ref_out, ref_last, ref_grads = outputs_and_grads(
        lambda **kw: selective_scan_naive(**kw, delta_softplus=True, return_last_state=True),
        inputs)
    if time_major:
        def fn(**kw):  # the projection weights see the channel-major layout
            out, last = selective_scan_decomposed(**kw, delta_softplus=True, time_major=True)
            assert out.is_contiguous()
            return out.transpose(1, 2), last

        out, last, grads = outputs_and_grads(fn, to_time_major(inputs))
        grads = {k: g.permute(0, 2, 1) if k in ('u', 'delta', 'z') else
                 g.permute(0, 2, 3, 1) if k in ('B', 'C') else g for k, g in grads.items()}
    else:
        out, last, grads = outputs_and_grads(
            lambda **kw: selective_scan_decomposed(**kw, delta_softplus=True), inputs)
        assert out.is_contiguous()
    assert out.dtype == torch.float64 and last.dtype == torch.float64
    assert last.shape == (2, 4, N)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    assert set(grads) == set(ref_grads)
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9,
                                   msg=lambda m, k=k: f'gradient of {k}: {m}')


def test_selective_scan_decomposed_dtypes_and_plain_delta():
    """float32 / bfloat16 inputs: output in u's dtype, last state float32; without
    softplus and bias the time steps are delta itself."""
    inputs = make_inputs(1, 6, 40, 3, 3, True, True, False, seed=3)
    inputs = {k: None if v is None else v.detach() for k, v in inputs.items()}
    inputs['delta'] = inputs['delta'].abs()
    ref_out, ref_last = selective_scan_naive(**inputs, return_last_state=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        cast = {k: None if v is None else v.to(dtype) for k, v in inputs.items()}
        out, last = selective_scan_decomposed(**cast)
        assert out.dtype == dtype and last.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol * 10)
        torch.testing.assert_close(last.double(), ref_last, rtol=tol, atol=tol * 10)


def test_selective_scan_decomposed_strong_decay_is_finite():
    """Decays far below float32's range (delta * A ~ -1e4 per step): the pairwise
    block form never forms exp of a positive sum, so no inf / nan."""
    inputs = make_inputs(1, 2, 3 * SPAN + 5, 2, 1, False, False, False, seed=4)
    inputs = {k: None if v is None else v.detach().float() for k, v in inputs.items()}
    inputs['A'] = inputs['A'] * 1e4
    ref_out, ref_last = selective_scan_naive(**inputs, delta_softplus=True,
                                             return_last_state=True)
    out, last = selective_scan_decomposed(**inputs, delta_softplus=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('hw', [(1, 1), (3, 5), (6, 4)])
def test_cross_scan_decomposed_matches_naive_both_layouts(hw):
    H, W = hw
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    ys = torch.randn(2, 4, 3, H, W, dtype=torch.float64)
    assert torch.equal(cross_scan_decomposed(x), cross_scan_naive(x))
    assert torch.equal(cross_merge_decomposed(ys), cross_merge_naive(ys))
    # Time-major: (B, H, W, C) -> (B, L, 4, C) and (B, H, W, 4, C) -> (B, H, W, C).
    xs = cross_scan_decomposed(x.permute(0, 2, 3, 1).contiguous(), time_major=True)
    assert xs.shape == (2, H * W, 4, 3)
    assert torch.equal(xs.permute(0, 2, 3, 1), cross_scan_naive(x))
    ys_tm = ys.flatten(3).permute(0, 3, 1, 2).reshape(2, H, W, 4, 3)
    merged = cross_merge_decomposed(ys_tm, time_major=True)
    assert merged.shape == (2, H, W, 3) and merged.is_contiguous()
    torch.testing.assert_close(merged.permute(0, 3, 1, 2), cross_merge_naive(ys))


def test_selective_scan_decomposed_exports_for_a_symbolic_length():
    """One torch.export trace serves every L (no loop over L, no guard on it),
    including L <= SPAN (one block) and L = 2."""
    import torch.fx.experimental._config as fx_config

    class Scan(torch.nn.Module):

        def forward(self, u, delta, A, B, C, D, delta_bias):
            return selective_scan_decomposed(u, delta, A, B, C, D, None, delta_bias, True)

    def args(L, seed):
        inputs = make_inputs(1, 4, L, 2, 2, True, False, True, seed=seed)
        return tuple(inputs[k].detach().float() for k in ('u', 'delta', 'A', 'B', 'C', 'D',
                                                         'delta_bias'))

    L = torch.export.Dim('L', min=2, max=1 << 16)
    shapes = ({2: L}, {2: L}, None, {3: L}, {3: L}, None, None)
    # Sizes are reasoned about as >= 2 (the block count may be 1 at run time:
    # nothing here depends on a size being 1).
    with fx_config.patch(backed_size_oblivious=True):
        ep = torch.export.export(Scan(), args(SPAN + 100, 0), dynamic_shapes=shapes)
    for length in (2, CHUNK + 3, SPAN, 3 * SPAN + 5):
        a = args(length, length)
        for got, want in zip(ep.module()(*a), Scan()(*a)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


class _ScanModule(torch.nn.Module):
    """The three registered operators as VMamba's SS2D chains them (time-major),
    plus a channel-major scan with a gate as Vim's mixer calls it."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(-torch.rand(8, 2, generator=gen) - 0.1)
        self.D = torch.nn.Parameter(torch.randn(8, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(8, generator=gen))

    def forward(self, x):  # (B, 2, H, W)
        from vmamba_mm.ops import cross_merge, cross_scan, selective_scan
        B, _, H, W = x.shape
        xs = cross_scan(x.permute(0, 2, 3, 1), layout='time_major')  # (B, L, 4, 2)
        u = xs.reshape(B, H * W, 8)
        BC = xs.reshape(B, H * W, 2, 4)
        y = selective_scan(u, u * 0.5, self.A, BC[..., :2], BC[..., 2:], self.D,
                           delta_bias=self.bias, delta_softplus=True, layout='time_major')
        merged = cross_merge(y.view(B, H, W, 4, 2), layout='time_major')  # (B, H, W, 2)
        cm = merged.reshape(B, H * W, 2).transpose(1, 2).repeat(1, 4, 1)  # (B, 8, L)
        out = selective_scan(cm, cm, self.A, BC[..., :2].permute(0, 2, 3, 1),
                             BC[..., 2:].permute(0, 2, 3, 1), z=cm.flip(-1),
                             delta_bias=self.bias, delta_softplus=True)
        return merged, out


def test_decomposition_table_lowers_the_registered_operators():
    """run_decompositions with the table leaves no vmamba_mm node, and the lowered
    program computes what the operators compute (symbolic H and W, sizes 1 included)."""
    import torch.fx.experimental._config as fx_config

    from vmamba_mm.ops.export import decomposition_table
    model = _ScanModule().eval().requires_grad_(False)
    h, w = torch.export.Dim('h', min=1, max=64), torch.export.Dim('w', min=1, max=64)
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        ep = torch.export.export(model, (torch.randn(1, 2, 12, 8), ),
                                 dynamic_shapes=({2: 4 * h, 3: 4 * w}, ))
        ops = {str(n.target) for n in ep.graph.nodes if 'vmamba_mm' in str(n.target)}
        assert ops == {'vmamba_mm.cross_scan.default', 'vmamba_mm.cross_merge.default',
                       'vmamba_mm.selective_scan_fwd.default'}
        ep = ep.run_decompositions(decomposition_table())
    assert not [n for n in ep.graph.nodes if 'vmamba_mm' in str(n.target)]
    for shape in ((12, 8), (4, 4), (68, 20)):
        x = torch.randn(1, 2, *shape)
        with torch.no_grad():
            for got, want in zip(ep.module()(x), model(x)):
                assert got.shape == want.shape
                # float32, two summation orders: relative to the output's scale.
                assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_decomposition_refuses_a_scan_that_saves_for_backward():
    from vmamba_mm.ops.export import decomposition_table
    inputs = make_inputs(1, 4, 8, 2, 1, False, False, False)
    args = [inputs[k].detach().float() for k in ('u', 'delta', 'A', 'B', 'C')]
    lower = decomposition_table()[torch.ops.vmamba_mm.selective_scan_fwd.default]
    out, last, res0, res1 = lower(*args, None, None, None, False, False, 'torch', False)
    assert out.shape == (1, 4, 8) and last.shape == (1, 4, 2) and res0.numel() == 0
    with pytest.raises(ValueError, match='save=True'):
        lower(*args, None, None, None, False, False, 'torch', True)
