"""Benchmark the selective-scan backends on VMamba / Vim shapes.

Prints a table and writes JSON (device, versions, shapes, times, GB/s, ratios).
On CPU it compares the 'cpu' backend (the C++ kernel) and the 'torch' (chunked)
backend with two per-step loops: 'reference' (this package's loop, ``unbind``
along L) and 'official_loop' (a
loop written the way the official CPU fallbacks are: mamba_ssm's
``selective_scan_ref`` and VMamba's ``selective_scan_torch`` precompute
``exp(delta A)`` and ``delta B u`` as full (batch, dim, L, N) tensors and index
them at each step, so their backward is O(L^2); it is defined here, in the
benchmark only). On CUDA it compares 'triton', 'torch' and mamba_ssm's
``selective_scan_fn`` when importable, and measures the device's copy
bandwidth to report the fraction of it that the forward pass reaches.

The CPU bound: each state update is one exp and two fused multiply-adds, so the
record measures, in the same run, how many elements per second the C++ kernel's
own vectorised exp makes on a cache-resident buffer (one thread), and reports
the 'cpu' backend's state updates per second (batch * dim * L * N over the time)
as a fraction of it (times the threads): ``fwd_fraction_of_exp_bound`` and
``fwd_bwd_fraction_of_exp_bound`` (forward + backward counted as one pass).

Examples::

    python tools/benchmark_scan.py --shapes vmamba_t_s1        # the 20x CPU target
    python tools/benchmark_scan.py --quick                     # all shapes, 1 timed run
    python tools/benchmark_scan.py --batch 8 --out /tmp/scan.json
    python tools/benchmark_scan.py --out docs/benchmarks/scan_cpu.json   # the kept record

The record goes to ``work_dirs/benchmarks/scan_<device>.json`` unless ``--out`` says
otherwise.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from vmamba_mm.benchmark import cpu_name, package_versions  # noqa: E402
from vmamba_mm.ops import selective_scan  # noqa: E402

# name: (dim, L, N, G, z). VMamba-T at 224^2: 4 directions folded into dim with
# G = 4 groups of B/C, N = 1 (d_state), softplus + delta_bias + D; Vim: N = 16, z gating.
SHAPES = {
    'vmamba_t_s1': (4 * 96, 56 * 56, 1, 4, False),
    'vmamba_t_s2': (4 * 192, 28 * 28, 1, 4, False),
    'vmamba_t_s3': (4 * 384, 14 * 14, 1, 4, False),
    'vmamba_t_s4': (4 * 768, 7 * 7, 1, 4, False),
    'vim_s_224': (768, 14 * 14 + 1, 16, 1, True),
    'vim_ti_1248': (384, 78 * 78 + 1, 16, 1, True),
    # as Vim's mixer calls it: both directions of Vim-Ti (2 x 384 channels, G = 2)
    'vim_ti_224x2': (768, 14 * 14 + 1, 16, 2, True),
    'vim_ti_1024x2': (768, 64 * 64 + 1, 16, 2, True),
}


def exp_bound(reps=4000, numel=4096):
    """Elements per second of the C++ kernel's vectorised exp on a cache-resident
    float32 buffer (one thread): best of 5."""
    from vmamba_mm.ops.selective_scan import cpu
    ops = cpu.load()
    x = -torch.rand(numel)
    ops.exp_bound(x, 10)
    best = min(_seconds(lambda: ops.exp_bound(x, reps)) for _ in range(5))
    return numel * reps / best


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_inputs(batch, dim, L, N, G, z, dtype, device):
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) - 2,
                A=-torch.exp(torch.randn(dim, N, generator=gen)).to(device),
                B=rnd(batch, G, N, L), C=rnd(batch, G, N, L),
                D=torch.ones(dim, device=device), z=rnd(batch, dim, L) if z else None,
                delta_bias=torch.zeros(dim, device=device))


def official_style_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """Per-step loop structured like the official CPU fallbacks (baseline only).

    Like mamba_ssm's ``selective_scan_ref`` / VMamba's ``selective_scan_torch``:
    float32 math, B/C repeated to every channel, ``exp(delta A)`` and
    ``delta B u`` materialised as (batch, dim, L, N), then one indexed step per
    position. The backward of each ``t[:, :, i]`` scatters into a full-size
    zero tensor, hence O(L^2 * batch * dim * N) work for the backward pass.
    """
    dtype_in = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, L = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    rep = dim // B.shape[1]
    B = B.float().repeat_interleave(rep, dim=1)  # (batch, dim, N, L)
    C = C.float().repeat_interleave(rep, dim=1)
    decay = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    drive = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(L):
        state = decay[:, :, i] * state + drive[:, :, i]
        ys.append(torch.einsum('bdn,bdn->bd', state, C[:, :, :, i]))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


# The official-style loop's backward does O(L^2 * batch * dim * N) work: it is
# timed once (no warm-up) and only up to this many element-steps (VMamba-T
# stage 1 at batch 2 is 7.6e9, about half a minute on one core).
OFFICIAL_BWD_MAX_WORK = 1.2e10


def moved_bytes(batch, dim, L, N, G, z, elem):
    """Minimal HBM traffic: every input read once, every output written once."""
    seq = batch * dim * L * elem
    bc = batch * G * N * L * elem
    fwd = seq * (3 + int(z)) + 2 * bc  # u, delta, (z) in, out; B, C in
    # backward: re-read the inputs and dout; write du, ddelta, (dz), dB, dC
    bwd = seq * (3 + int(z)) + 2 * bc + seq * (2 + int(z)) + 2 * bc
    return fwd, fwd + bwd


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timeit(fn, device, reps, warmup):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)


def scan_fn(backend):
    if backend == 'official_loop':
        return official_style_loop
    if backend == 'mamba_ssm':
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn
    return lambda *a, **k: selective_scan(*a, **k, backend=backend)


def bench_one(backend, inputs, device, reps, warmup, bwd_reps=None, bwd_warmup=None):
    """(best, median) ms of the forward and of forward+backward; the latter is
    None when ``bwd_reps == 0``."""
    fn = scan_fn(backend)
    kw = dict(delta_softplus=True)

    def fwd():
        with torch.no_grad():
            fn(**inputs, **kw)

    leaves = {k: v.detach().requires_grad_() if v is not None else None for k, v in inputs.items()}

    def fwd_bwd():
        for v in leaves.values():
            if v is not None:
                v.grad = None
        out = fn(**leaves, **kw)
        out.backward(torch.ones_like(out))

    bwd_reps = reps if bwd_reps is None else bwd_reps
    bwd_warmup = warmup if bwd_warmup is None else bwd_warmup
    return (timeit(fwd, device, reps, warmup),
            timeit(fwd_bwd, device, bwd_reps, bwd_warmup) if bwd_reps else None)


def copy_bandwidth(device):
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    best, _ = timeit(lambda: y.copy_(x), device, reps=20, warmup=3)
    return 2 * x.numel() / (best * 1e-3) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shapes', default=','.join(SHAPES),
                        help=f'comma-separated subset of {", ".join(SHAPES)}')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--backends', default=None,
                        help='comma-separated; default: torch,reference,official_loop on CPU, '
                             'triton,torch,mamba_ssm (if installed) on CUDA')
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--quick', action='store_true', help='1 warm-up and 1 timed run per case')
    parser.add_argument('--threads', default=None,
                        help='comma-separated torch.set_num_threads values on CPU, each '
                             'measured in turn (default: the current setting)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', default=None,
                        help='JSON path (default work_dirs/benchmarks/scan_<device>.json)')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    thread_counts = ([int(t) for t in args.threads.split(',') if t] if args.threads
                     else [torch.get_num_threads()])
    names = [s for s in args.shapes.split(',') if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f'unknown shapes {unknown}; choose from {list(SHAPES)}')
    versions = package_versions(('torch', 'triton', 'mamba_ssm'))
    if args.backends:
        backends = args.backends.split(',')
    elif device.type == 'cuda':
        backends = ['triton', 'torch']
        if not versions['mamba_ssm'].startswith('unavailable'):
            backends.append('mamba_ssm')
    else:
        backends = ['cpu', 'torch', 'reference', 'official_loop']
    reps, warmup = (1, 1) if args.quick else (args.reps, 1)
    dtype = getattr(torch, args.dtype)
    elem = torch.finfo(dtype).bits // 8

    dev_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()
    report = dict(device=dev_name, device_type=device.type, versions=versions,
                  threads=thread_counts, cpu_count=os.cpu_count(),
                  load_average_at_start=os.getloadavg(), dtype=args.dtype, batch=args.batch,
                  timing='ms: best and median of `reps` runs after 1 warm-up',
                  reps=reps, results=[], torch_speedup=[])
    if device.type == 'cuda':
        report['copy_bandwidth_GBps'] = copy_bandwidth(device)
    if 'cpu' in backends:
        from vmamba_mm.ops.selective_scan import cpu
        report['cpu_kernel'] = dict(capability=cpu.load().capability(),
                                    float_lanes=cpu.load().vector_width(),
                                    flags=cpu.build_flags())
        report['exp_bound_elements_per_s_1thread'] = exp_bound()
        print(f'exp bound: {report["exp_bound_elements_per_s_1thread"] / 1e9:.2f} G elements/s '
              f'(1 thread, {report["cpu_kernel"]["capability"]})')

    header = (f'{"shape":<13}{"thr":>3} {"backend":<15}{"fwd ms":>9}{"(med)":>9}{"f+b ms":>10}{"(med)":>10}'
              f'{"fwd GB/s":>10}{"f+b GB/s":>10}')
    print(header)
    print('-' * len(header))
    fmt = lambda v, w: f'{v:{w}.2f}' if v is not None else f'{"-":>{w}}'  # noqa: E731
    for threads, name in [(t, n) for t in thread_counts for n in names]:
        if device.type == 'cpu':
            torch.set_num_threads(threads)
        dim, L, N, G, z = SHAPES[name]
        inputs = make_inputs(args.batch, dim, L, N, G, z, dtype, device)
        fwd_bytes, total_bytes = moved_bytes(args.batch, dim, L, N, G, z, elem)
        rows = {}
        for backend in backends:
            row = dict(shape=name, dim=dim, L=L, N=N, G=G, z=z, backend=backend,
                       threads=threads)
            bwd_reps = bwd_warmup = None
            if backend == 'official_loop':
                work = args.batch * dim * N * L * L
                bwd_reps, bwd_warmup = (1, 0) if work <= OFFICIAL_BWD_MAX_WORK else (0, 0)
                row['fwd_bwd_note'] = (
                    'one timed run, no warm-up (O(L^2) backward)' if bwd_reps else
                    f'not run: O(L^2) backward, batch*dim*N*L^2 = {work:.2g} element-steps '
                    f'> {OFFICIAL_BWD_MAX_WORK:.2g}')
            (f_best, f_med), fb = bench_one(backend, inputs, device, reps, warmup,
                                            bwd_reps, bwd_warmup)
            fb_best, fb_med = fb if fb is not None else (None, None)
            row.update(fwd_ms=f_best, fwd_ms_median=f_med, fwd_bwd_ms=fb_best,
                       fwd_bwd_ms_median=fb_med,
                       fwd_GBps=fwd_bytes / (f_best * 1e-3) / 1e9,
                       fwd_bwd_GBps=total_bytes / (fb_best * 1e-3) / 1e9 if fb else None)
            if 'copy_bandwidth_GBps' in report:
                row['fwd_fraction_of_copy_bw'] = row['fwd_GBps'] / report['copy_bandwidth_GBps']
            if backend == 'cpu':
                updates = args.batch * dim * L * N
                bound = report['exp_bound_elements_per_s_1thread'] * threads
                row['state_updates_per_s_fwd'] = updates / (f_best * 1e-3)
                row['fwd_fraction_of_exp_bound'] = row['state_updates_per_s_fwd'] / bound
                if fb_best is not None:
                    row['state_updates_per_s_fwd_bwd'] = updates / (fb_best * 1e-3)
                    row['fwd_bwd_fraction_of_exp_bound'] = (
                        row['state_updates_per_s_fwd_bwd'] / bound)
            row['load_average_1min'] = os.getloadavg()[0]
            rows[backend] = row
            print(f'{name:<13}{threads:>3} {backend:<15}{f_best:9.2f}{f_med:9.2f}{fmt(fb_best, 10)}'
                  f'{fmt(fb_med, 10)}{row["fwd_GBps"]:10.2f}{fmt(row["fwd_bwd_GBps"], 10)}',
                  flush=True)
        # Speed-up of each backend over every other one (best times): how many
        # times faster `backend` is than the key.
        for backend, row in rows.items():
            row['speedup_fwd'] = {o: r['fwd_ms'] / row['fwd_ms']
                                  for o, r in rows.items() if o != backend}
            row['speedup_fwd_bwd'] = {
                o: r['fwd_bwd_ms'] / row['fwd_bwd_ms'] for o, r in rows.items()
                if o != backend and r['fwd_bwd_ms'] is not None and row['fwd_bwd_ms'] is not None}
        first = backends[0]
        for other in backends[1:]:
            fb_ratio = rows[first]['speedup_fwd_bwd'].get(other)
            fb_text = f'x{fb_ratio:.1f}' if fb_ratio is not None else 'not measured'
            print(f'{"":<17}{first} vs {other}: forward x{rows[first]["speedup_fwd"][other]:.1f}, '
                  f'forward+backward {fb_text}')
        report['results'].extend(rows.values())
        if 'cpu' in rows:
            r = rows['cpu']
            print(f'{"":<17}cpu: {r["fwd_fraction_of_exp_bound"]:.0%} of the exp bound forward, '
                  f'{r.get("fwd_bwd_fraction_of_exp_bound", float("nan")):.0%} forward+backward')
        if 'torch' in rows and len(rows) > 1:
            tr = rows['torch']
            report['torch_speedup'].append(dict(
                shape=name, threads=threads,
                **{f'vs_{o}': dict(fwd=tr['speedup_fwd'][o],
                                   fwd_bwd=tr['speedup_fwd_bwd'].get(o))
                   for o in rows if o != 'torch'}))
        del inputs

    report['load_average_at_end'] = os.getloadavg()
    out = args.out or os.path.join('work_dirs', 'benchmarks', f'scan_{device.type}.json')
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    if 'copy_bandwidth_GBps' in report:
        print(f'copy bandwidth: {report["copy_bandwidth_GBps"]:.0f} GB/s')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
