"""The 'cpu' backend (the C++ kernel): shapes that exercise its blocking, threads,
its build (flags, cache key) and what happens where it cannot be built.

Every backend's common cases (both layouts, strides, dtypes, opcheck) are in
test_selective_scan.py; here the cases that cross the kernel's channel blocks (16
or 8 lanes), its chunks of kept states (CHUNK steps) and the backward's splits.
"""
import warnings

import pytest
import torch

from vmamba_mm.ops import selective_scan
from vmamba_mm.ops import backend as registry
from vmamba_mm.ops.selective_scan import cpu

from test_selective_scan import TOL, _reference, compare, make_inputs, run

LAYOUTS = ['channel_major', 'time_major']


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=['f64', 'f32'])
@pytest.mark.parametrize('batch,dim,L,N,G', [
    (1, 74, 2 * cpu.CHUNK + 9, 16, 2),  # 37 channels a group: two full blocks and a tail
    (2, 40, cpu.CHUNK, 5, 1),  # L exactly one chunk, N not a power of 2
    (1, 36, cpu.CHUNK + 1, 1, 4),  # one step into the second chunk, VMamba's N = 1
    (1, 24, 3 * cpu.CHUNK - 1, 8, 3),
])
def test_blocks_chunks_and_tails(batch, dim, L, N, G, dtype, layout):
    inputs = make_inputs(batch, dim, L, N, G, z=True, D=True, delta_bias=True, softplus=True,
                         seed=L + N)
    ref = _reference(inputs, True, True, dtype)
    got = run(inputs, 'cpu', True, True, cast=dtype, layout=layout, contiguous=False)
    compare(got, ref, *TOL[dtype])


@pytest.mark.parametrize('N', range(1, 17))
def test_every_state_size_up_to_16(N):
    inputs = make_inputs(1, 20, 70, N, 2, z=N % 2 == 0, D=True, delta_bias=True,
                         softplus=True, seed=N)
    ref = _reference(inputs, True, True, torch.float64)
    compare(run(inputs, 'cpu', True, True, layout='time_major'), ref, *TOL[torch.float64])


def test_state_size_above_64_is_a_clear_error():
    inputs = make_inputs(1, 4, 5, 65, 1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match='state size N = 65 > 64'):
        selective_scan(**{k: v.detach() for k, v in inputs.items() if v is not None},
                       backend='cpu')


def _all_results(inputs, layout='channel_major'):
    out, last, grads = run(inputs, 'cpu', True, True, layout=layout)
    return [out, last] + [grads[k] for k in sorted(grads)]


def test_one_and_two_threads_agree():
    """Threads split channel blocks (forward) and each group's blocks (backward,
    partial sums of dB / dC added after): the same forward bit for bit, gradients
    equal up to the order of the dB / dC sums."""
    inputs = make_inputs(1, 64, 150, 16, 1, z=True, D=True, delta_bias=True, softplus=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu.splits(1, 1, 64) == 1
        one = _all_results(inputs)
        torch.set_num_threads(2)
        assert cpu.splits(1, 1, 64) == 2
        two = _all_results(inputs)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    for a, b in zip(one[2:], two[2:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_splits_cover_every_channel_block():
    """The backward gives the same gradients however each group's blocks are split."""
    ops = cpu.load()
    W = ops.vector_width() // 2  # float64 lanes
    batch, L, G, N, dg = 1, 90, 2, 4, 3 * W + 1  # four blocks a group
    gen = torch.Generator().manual_seed(0)
    t = (lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64))
    u, delta, dout = t(batch, L, G * dg), t(batch, L, G * dg), t(batch, L, G * dg)
    B, C, z = t(batch, L, G, N), t(batch, L, G, N), t(batch, L, G * dg)
    At, D, bias = -t(N, G * dg).exp(), t(G * dg), t(G * dg)
    _, _, kept = ops.scan_fwd(u, delta, At, B, C, D, z, bias, True, cpu.CHUNK, True, True)
    results = []
    for parts in (1, 2, 3, 4):
        grads = ops.scan_bwd(dout, None, u, delta, At, B, C, D, z, bias, kept, True,
                             cpu.CHUNK, parts, True)
        assert grads[3].shape == (parts, batch, L, G, N)
        results.append([g.sum(0) if i in (3, 4) else g for i, g in enumerate(grads)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match=r'splits must be in \[1, 4\]'):
        ops.scan_bwd(dout, None, u, delta, At, B, C, D, z, bias, kept, True, cpu.CHUNK, 5, True)


def test_kept_states_are_the_chunk_boundaries():
    """What the forward keeps for the backward: the state entering every chunk
    (zero for the first), (batch, ceil(L / CHUNK), N, dim) -- not the full states."""
    L = 2 * cpu.CHUNK + 3
    inputs = make_inputs(1, 6, L, 3, 2, D=True, delta_bias=True, softplus=True)
    kw = {k: v.detach() for k, v in inputs.items() if v is not None}
    _, _, kept, _ = torch.ops.vmamba_mm.selective_scan_fwd(
        kw['u'], kw['delta'], kw['A'], kw['B'], kw['C'], kw['D'], None, kw['delta_bias'],
        True, False, 'cpu', True)
    assert kept.shape == (1, 3, 3, 6)
    for c in range(3):
        t = c * cpu.CHUNK
        if t == 0:
            expected = torch.zeros(1, 6, 3, dtype=torch.float64)
        else:
            _, expected = selective_scan(kw['u'][..., :t], kw['delta'][..., :t], kw['A'],
                                         kw['B'][..., :t], kw['C'][..., :t], kw['D'],
                                         delta_bias=kw['delta_bias'], delta_softplus=True,
                                         return_last_state=True, backend='reference')
        torch.testing.assert_close(kept[:, c].transpose(1, 2), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('arch', ['vmamba', 'vim'])
def test_backbone_equals_reference_backend_in_float64(arch):
    """A whole small backbone on the 'cpu' backend against the 'reference' one:
    features and every parameter gradient (float64)."""
    torch.manual_seed(0)
    if arch == 'vmamba':
        from vmamba_mm.models import VMamba
        cfg = dict(depths=(1, 1), dims=16, d_state=4, ssm_ratio=2.0)

        def build(backend):
            return VMamba(cfg, out_indices=(0, 1), scan_backend=backend)
        x = torch.randn(2, 3, 40, 28, dtype=torch.float64)
    else:
        from vmamba_mm.models import Vim

        def build(backend):
            return Vim(dict(embed_dims=32, num_layers=2, d_state=16, expand=2), img_size=32,
                       patch_size=8, scan_backend=backend)
        x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    model = build('cpu').double().eval()  # no drop path
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = build('reference').double().eval()
    ref.load_state_dict(model.state_dict())

    def features_and_grads(m):
        outs = m(x)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        sum((o * o).sum() for o in outs).backward()
        return [o.detach() for o in outs], [p.grad for p in m.parameters()]

    got, want = features_and_grads(model), features_and_grads(ref)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), got[1], want[1]):
        assert a is not None and b is not None, f'no gradient for {name}'
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f'grad of {name}')


# ------------------------------------------------------------ build, cache, fallback
def test_flags_and_cache_key_follow_the_instruction_set():
    """Built for the instruction set PyTorch detects on this CPU, with the flags that
    select ATen's vector code for it; the cache key names it, so a build made on a
    CPU with AVX-512 is never loaded on one without."""
    assert '-mavx512f' in cpu.build_flags('AVX512')
    assert '-DCPU_CAPABILITY_AVX512' in cpu.build_flags('AVX512')
    avx2 = cpu.build_flags('AVX2')
    assert '-mavx2' in avx2 and '-mfma' in avx2 and not any('512' in f for f in avx2)
    assert not any(f.startswith('-m') for f in cpu.build_flags('DEFAULT'))
    names = {cap: cpu.extension_name(cap) for cap in ('AVX512', 'AVX2', 'DEFAULT')}
    assert len(set(names.values())) == 3
    assert all(f'_{cap.lower()}_' in name for cap, name in names.items())
    assert cpu.load().capability() == cpu.capability()
    assert cpu.cache_dir().endswith(cpu.extension_name())


def _failing_build(monkeypatch):
    def build():
        raise FileNotFoundError("[Errno 2] No such file or directory: 'c++'")
    monkeypatch.setattr(cpu, '_build', build)
    monkeypatch.setattr(cpu, '_state', {})
    monkeypatch.setattr(registry, '_DEFAULTS', {})
    monkeypatch.delenv('VMAMBA_MM_SCAN_BACKEND', raising=False)


def test_failed_build_falls_back_to_torch_with_one_warning(monkeypatch):
    _failing_build(monkeypatch)
    inputs = make_inputs(1, 4, 9, 2, 1, dtype=torch.float32)
    kw = {k: v.detach() for k, v in inputs.items() if v is not None}
    with pytest.warns(RuntimeWarning) as record:
        out = selective_scan(**kw)
    assert len(record) == 1
    text = str(record[0].message)
    for words in ("'cpu'", 'could not be built', "No such file or directory: 'c++'",
                  'apt-get install g++', "backend 'torch'", 'VMAMBA_MM_SCAN_BACKEND=torch'):
        assert words in text, words
    torch.testing.assert_close(out, selective_scan(**kw, backend='torch'), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once only
        selective_scan(**kw)
    assert registry.default_backend('selective_scan', torch.device('cpu')) == 'torch'


@pytest.mark.parametrize('how', ['argument', 'environment'])
def test_explicit_cpu_backend_that_cannot_build_is_an_error(monkeypatch, how):
    _failing_build(monkeypatch)
    inputs = make_inputs(1, 4, 9, 2, 1, dtype=torch.float32)
    kw = {k: v.detach() for k, v in inputs.items() if v is not None}
    if how == 'environment':
        monkeypatch.setenv('VMAMBA_MM_SCAN_BACKEND', 'cpu')
    else:
        kw['backend'] = 'cpu'
    with pytest.raises(RuntimeError, match=r"(?s)backend 'cpu': the C\+\+ kernel could not be "
                                           r"built.*No such file or directory: 'c\+\+'.*"
                                           r"apt-get install g\+\+"):
        selective_scan(**kw)


def test_cpu_backend_refuses_other_devices():
    inputs = make_inputs(1, 4, 9, 2, 1, dtype=torch.float32, device='meta')
    kw = {k: v.detach() for k, v in inputs.items() if v is not None}
    with pytest.raises(ValueError, match="backend 'cpu' does not run on meta tensors"):
        selective_scan(**kw, backend='cpu')


_OTHER_ISA_CHECK = '''
import sys, torch
sys.path.insert(0, 'tests')
from vmamba_mm.ops.selective_scan import cpu
from test_selective_scan import TOL, _reference, compare, make_inputs, run
assert cpu.capability() == sys.argv[1], (cpu.capability(), sys.argv[1])
assert cpu.load().capability() == sys.argv[1]
for layout in ('channel_major', 'time_major'):
    for dtype in (torch.float32, torch.float64):
        inputs = make_inputs(2, 42, 2 * cpu.CHUNK + 5, 16, 2, z=True, D=True, delta_bias=True,
                             softplus=True)
        ref = _reference(inputs, True, True, dtype)
        compare(run(inputs, 'cpu', True, True, cast=dtype, layout=layout), ref, *TOL[dtype])
print('ok', cpu.load().vector_width())
'''


@pytest.mark.slow
@pytest.mark.parametrize('isa,lanes', [('AVX2', 8), ('DEFAULT', 8)])
def test_builds_for_other_instruction_sets(isa, lanes, tmp_path):
    """The kernel as built for a CPU without AVX-512 (AVX2, e.g. an AMD EPYC) and
    with ATen's generic vector code (any CPU), forced here through PyTorch's own
    ATEN_CPU_CAPABILITY: its own cache entry, and the same results (a fresh process;
    one build each, cached)."""
    import os
    import subprocess
    import sys
    if isa == 'AVX2' and 'avx2' not in open('/proc/cpuinfo').read():
        pytest.skip('this CPU has no AVX2')
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, '-c', _OTHER_ISA_CHECK, isa], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-2:] == ['ok', str(lanes)]
