"""The GPU check: correctness, speed and mixed-precision stability on one GPU.

One script for a short session on a GPU machine (torch, triton, timm, numpy;
no OpenMMLab: ``vmamba_mm.models`` needs only mmengine, brought as a wheel).
Stages, in order of priority (docs/gpu.md describes each record):

    env                  device, versions, TF32 settings
    correctness_ops      selective scan (every option) and cross-scan/merge, both
                         layouts, fp32/fp16/bf16, forward and all gradients on
                         the 'triton' backend against the float64 reference
    correctness_models   VMamba-T and Vim-Ti forward + backward, triton vs torch
    bench_scan           scan time, bytes/s against a copy, peak memory:
                         triton (both layouts), torch, mamba_ssm if importable
    bench_backbones      VMamba-T vs timm Swin-T / ConvNeXt-T (batch 128, 224^2);
                         Vim-Ti vs timm DeiT-Ti from 224^2 to 1248^2
    mixed_precision      300 AdamW steps, fp16 + GradScaler and bf16
    tune_tiles           scan tile sizes / warps sweep (fills leftover time)

Every stage runs in try/except, records what failed and goes on; each writes
``OUT/<stage>.json`` after every measurement, so a timeout still leaves what
was measured. ``--only`` / ``--skip`` continue a later run where one stopped.
``--smoke``: tiny shapes on CPU with the torch backend and Triton's
interpreter (the test suite runs it), so the script is known to work before a
GPU is there.

    python tools/gpu_check.py                      # records in work_dirs/gpu_check
    python tools/gpu_check.py --out OUT --only bench_backbones,mixed_precision
    python tools/gpu_check.py --out /tmp/smoke --smoke
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback

STAGES = ('env', 'correctness_ops', 'correctness_models', 'bench_scan', 'bench_backbones',
          'mixed_precision', 'tune_tiles')
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


# ------------------------------------------------------------------ configuration
# Scan shapes: name -> (batch, dim, L, N, G, z). VMamba-T stages at 224^2 (4
# directions folded into dim, G = 4, N = 1); Vim (both directions stacked, G = 2,
# N = 16, z gate, class token) at 224^2 and 1248^2.
SCAN_SHAPES = {
    'vmamba_t_s1': (128, 4 * 96, 56 * 56, 1, 4, False),
    'vmamba_t_s2': (128, 4 * 192, 28 * 28, 1, 4, False),
    'vmamba_t_s3': (128, 4 * 384, 14 * 14, 1, 4, False),
    'vmamba_t_s4': (128, 4 * 768, 7 * 7, 1, 4, False),
    'vim_ti_224': (128, 2 * 384, 14 * 14 + 1, 16, 2, True),
    'vim_s_224': (128, 2 * 768, 14 * 14 + 1, 16, 2, True),
    'vim_ti_1248': (8, 2 * 384, 78 * 78 + 1, 16, 2, True),
    'vim_s_1248': (8, 2 * 768, 78 * 78 + 1, 16, 2, True),
}
SMOKE_SCAN_SHAPES = {'tiny': (1, 8, 21, 4, 2, True)}

# Operator cases: (batch, dim, L, N, G, z, D, delta_bias, softplus, return_last_state).
OP_CASES = [
    (2, 64, 200, 16, 2, True, True, True, True, True),  # Vim-like, everything on
    (2, 64, 300, 1, 4, False, True, True, True, False),  # VMamba-like, several chunks
    (2, 48, 131, 4, 1, True, False, False, False, True),  # no D / bias / softplus
    (1, 32, 1, 16, 1, False, False, True, True, True),  # L = 1
    (2, 96, 77, 3, 3, True, True, False, True, False),  # N not a power of two, G = 3
]
SMOKE_OP_CASES = [(1, 8, 21, 4, 2, True, True, True, True, True)]
# (rtol, atol relative to the reference's max) per dtype.
TOLERANCE = {'float32': (2e-4, 2e-5), 'float16': (1e-2, 2e-3), 'bfloat16': (4e-2, 2e-2)}


class Budget:
    """The run's wall-clock budget; stages and their loops ask it for time."""

    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self):
        return self.end - time.perf_counter()


class Recorder:
    """One stage's JSON file, rewritten after every record or error."""

    def __init__(self, out, stage, meta):
        self.path = os.path.join(out, f'{stage}.json')
        self.start = time.perf_counter()
        self.data = dict(stage=stage, status='running', meta=meta, records=[], errors=[])
        self.flush()

    def flush(self):
        self.data['seconds'] = round(time.perf_counter() - self.start, 2)
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def add(self, **record):
        self.data['records'].append(record)
        self.flush()
        print(f'  [{self.data["stage"]}] ' + ' '.join(
            f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
            for k, v in record.items() if not isinstance(v, (dict, list))), flush=True)

    @contextlib.contextmanager
    def guard(self, label):
        """Record an exception of one measurement and carry on with the next."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - the check must keep going
            import torch
            self.data['errors'].append(dict(label=label, error=f'{type(e).__name__}: {e}'[:2000],
                                            traceback=traceback.format_exc()[-3000:]))
            self.flush()
            print(f'  [{self.data["stage"]}] FAILED {label}: {type(e).__name__}: '
                  f'{str(e)[:300]}', flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def finish(self, status):
        self.data['status'] = status
        self.flush()


# ------------------------------------------------------------------ helpers
def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


# Warm-up calls and least timed calls per measurement (--smoke: 1 and 1).
TIMING = dict(warmup=2, min_reps=3)


def timeit(fn, device, target_s=0.5, max_reps=50):
    """Mean seconds per call, synchronized; the first calls (compilation) are warm-up."""
    warmup, min_reps = TIMING['warmup'], TIMING['min_reps']
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = time.perf_counter() - start
    reps = int(max(min_reps, min(max_reps, target_s / max(once, 1e-6))))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps, reps


def peak_memory(fn, device):
    """Peak bytes allocated during ``fn()`` above what was allocated before (CUDA)."""
    import torch
    if device.type != 'cuda':
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def versions():
    import numpy
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__,
                numpy=numpy.__version__, cuda=torch.version.cuda)
    for name in ('triton', 'timm', 'mmengine', 'mamba_ssm'):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001
            info[name] = f'not importable ({type(e).__name__})'
    return info


def tf32_state():
    import torch
    return dict(matmul=torch.backends.cuda.matmul.allow_tf32,
                cudnn=torch.backends.cudnn.allow_tf32,
                float32_matmul_precision=torch.get_float32_matmul_precision())


def set_tf32(on):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _dtype(name):
    import torch
    return getattr(torch, name)


def scan_inputs(batch, dim, L, N, G, z, D, bias, softplus, dtype, layout, device, seed=0):
    """Scan inputs in the layout (A, D, bias float32), and the channel-major float64
    values they hold (the reference's inputs)."""
    import torch
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    ref = dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) if softplus else
               rnd(batch, dim, L).abs() * 0.5,
               A=-torch.exp(rnd(dim, N, scale=0.5)), B=rnd(batch, G, N, L), C=rnd(batch, G, N, L),
               D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
               delta_bias=rnd(dim).abs() * 0.2 if bias else None)
    low = {k: (v.to(torch.float32 if k in ('A', 'D', 'delta_bias') else dtype))
           if v is not None else None for k, v in ref.items()}
    ref = {k: v.double() if v is not None else None for k, v in low.items()}
    tm = layout == 'time_major'
    dev = {}
    for k, v in low.items():
        if v is None:
            dev[k] = None
        elif k in ('u', 'delta', 'z'):
            dev[k] = (v.transpose(1, 2).contiguous() if tm else v).to(device)
        elif k in ('B', 'C'):
            dev[k] = (v.permute(0, 3, 1, 2).contiguous() if tm else v).to(device)
        else:
            dev[k] = v.to(device)
    return dev, ref


def bench_inputs(batch, dim, L, N, G, z, dtype, layout, device):
    """Benchmark inputs made on the device, in the layout: the models' ranges
    (softplus(delta + bias) around 0.1, A < 0), D, bias and softplus on."""
    import torch
    gen = torch.Generator(device=device).manual_seed(0)
    tm = layout == 'time_major'

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=device, dtype=dt)

    seq = (batch, L, dim) if tm else (batch, dim, L)
    bc = (batch, L, G, N) if tm else (batch, G, N, L)
    return dict(u=rnd(*seq), delta=rnd(*seq) - 2, A=-torch.exp(rnd(dim, N, dt=torch.float32)),
                B=rnd(*bc), C=rnd(*bc), D=torch.ones(dim, device=device),
                z=rnd(*seq) if z else None, delta_bias=torch.zeros(dim, device=device))


def _to_channel_major(name, t, layout):
    if layout != 'time_major' or t is None:
        return t
    if name in ('u', 'delta', 'z', 'out'):
        return t.transpose(1, 2)
    if name in ('B', 'C'):
        return t.permute(0, 2, 3, 1)
    return t


def rel_err(got, ref):
    """max |got - ref| / (max |ref| + 1e-12), float64 on CPU."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return ((got - ref).abs().max() / (ref.abs().max() + 1e-12)).item()


def within(got, ref, rtol, atol):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(got.isfinite().all()):
        return False
    scale = ref.abs().max().item() + 1
    return bool(((got - ref).abs() <= atol * scale + rtol * ref.abs()).all())


# ------------------------------------------------------------------ stages
def stage_env(rec, cfg, budget):
    import torch
    info = dict(versions=versions(), tf32_default=tf32_state(), device=cfg['device'].type,
                threads=torch.get_num_threads(), smoke=cfg['smoke'],
                triton_interpret=os.environ.get('TRITON_INTERPRET'))
    if cfg['device'].type == 'cuda':
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f'{p.major}.{p.minor}',
                    memory_gib=p.total_memory / 2**30, sms=p.multi_processor_count)
    rec.add(**info)
    return 'ok'


def _scan_reference(naive, ref_in, softplus, last):
    """The float64 loop's output, last state and the gradients of a random
    projection of both: (out, last, grads, w, w_last)."""
    import torch
    leaves = {k: v.clone().requires_grad_() for k, v in ref_in.items() if v is not None}
    res = naive(leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'],
                D=leaves.get('D'), z=leaves.get('z'), delta_bias=leaves.get('delta_bias'),
                delta_softplus=softplus, return_last_state=last)
    out, last_state = res if last else (res, None)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    loss = (out * w).sum()
    wl = None
    if last:
        wl = torch.randn(last_state.shape, generator=gen, dtype=torch.float64)
        loss = loss + (last_state * wl).sum()
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return out.detach(), last_state.detach() if last else None, grads, w, wl


def stage_correctness_ops(rec, cfg, budget):
    import torch
    from vmamba_mm.ops.cross_scan.naive import cross_merge_naive, cross_scan_naive
    from vmamba_mm.ops import cross_merge, cross_scan, selective_scan
    from vmamba_mm.ops.selective_scan.naive import selective_scan_naive
    device = cfg['device']
    set_tf32(False)
    failed = 0
    for case in cfg['op_cases']:
        batch, dim, L, N, G, z, D, bias, softplus, last = case
        for dtype_name in cfg['dtypes']:
            ref = None  # the same values in both layouts: one reference
            for layout in ('channel_major', 'time_major'):
                if budget.left() < 0:
                    return 'out_of_time'
                label = f'scan {case} {dtype_name} {layout}'
                with rec.guard(label):
                    dev, ref_in = scan_inputs(batch, dim, L, N, G, z, D, bias, softplus,
                                              _dtype(dtype_name), layout, device, seed=sum(case))
                    if ref is None:
                        ref = _scan_reference(selective_scan_naive, ref_in, softplus, last)
                    ref_out, ref_last, ref_grads, w, wl = ref
                    args = {k: v.clone().requires_grad_() if v is not None else None
                            for k, v in dev.items()}
                    res = selective_scan(
                        args['u'], args['delta'], args['A'], args['B'], args['C'], D=args['D'],
                        z=args['z'], delta_bias=args['delta_bias'], delta_softplus=softplus,
                        return_last_state=last, backend='triton', layout=layout)
                    out, last_state = res if last else (res, None)
                    out_cm = _to_channel_major('out', out, layout)
                    loss = (out_cm.double() * w.to(device)).sum()
                    if last:
                        loss = loss + (last_state.double() * wl.to(device)).sum()
                    names = [k for k in args if args[k] is not None]
                    grads = torch.autograd.grad(loss, [args[k] for k in names])
                    rtol, atol = TOLERANCE[dtype_name]
                    errors = {'out': rel_err(out_cm, ref_out)}
                    ok = within(out_cm, ref_out, rtol, atol) and out.dtype == _dtype(dtype_name)
                    if last:
                        errors['last_state'] = rel_err(last_state, ref_last)
                        ok &= within(last_state, ref_last, rtol, atol)
                    for k, g in zip(names, grads):
                        g = _to_channel_major(k, g, layout)
                        errors[f'd{k}'] = rel_err(g, ref_grads[k])
                        ok &= within(g, ref_grads[k], rtol, atol)
                    failed += not ok
                    rec.add(op='selective_scan', case=list(case), dtype=dtype_name, layout=layout,
                            ok=bool(ok), rel_err=errors)
    for shape in cfg['cross_shapes']:
        for dtype_name in cfg['dtypes']:
            for layout in ('channel_major', 'time_major'):
                with rec.guard(f'cross {shape} {dtype_name} {layout}'):
                    B, C, H, W = shape
                    x = torch.randn(B, C, H, W, dtype=_dtype(dtype_name))
                    ys = torch.randn(B, 4, C, H, W, dtype=_dtype(dtype_name))
                    tm = layout == 'time_major'
                    x_in = (x.permute(0, 2, 3, 1).contiguous() if tm else x).to(device)
                    ys_in = (ys.permute(0, 3, 4, 1, 2).contiguous() if tm else ys).to(device)
                    s = cross_scan(x_in, backend='triton', layout=layout)
                    m = cross_merge(ys_in, backend='triton', layout=layout)
                    if tm:
                        s, m = s.permute(0, 2, 3, 1), m.permute(0, 3, 1, 2)
                    ok = torch.equal(s.cpu().double(), cross_scan_naive(x.double()))
                    m_err = rel_err(m, cross_merge_naive(ys.double()))
                    ok &= m_err < (1e-6 if dtype_name == 'float32' else 1e-2)
                    failed += not ok
                    rec.add(op='cross_scan_merge', shape=list(shape), dtype=dtype_name,
                            layout=layout, ok=bool(ok), merge_rel_err=m_err)
    return 'ok' if failed == 0 and not rec.data['errors'] else 'failed'


def build_vmamba(cfg, classes=1000, backend=None):
    """VMamba + global average pooling + a linear head; ``backend`` for the scan and
    the cross-scan (None: the default for the device)."""
    import torch.nn as nn
    from vmamba_mm.models.vmamba import VMamba

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = VMamba(cfg['vmamba_arch'], drop_path_rate=0.0, out_indices=(3,),
                                   scan_backend=backend, cross_scan_backend=backend)
            self.head = nn.Linear(self.backbone.dims[-1], classes)

        def forward(self, x):
            return self.head(self.backbone(x)[-1].mean((2, 3)))

    return Classifier()


def build_vim(cfg, img_size, classes=1000, backend=None):
    """Vim (class token) + a linear head."""
    import torch.nn as nn
    from vmamba_mm.models.vim import Vim

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Vim(cfg['vim_arch'], img_size=img_size, drop_path_rate=0.0,
                                scan_backend=backend)
            self.head = nn.Linear(self.backbone.embed_dims, classes)

        def forward(self, x):
            return self.head(self.backbone(x)[0])

    return Classifier()


def stage_correctness_models(rec, cfg, budget):
    import torch
    device = cfg['device']
    set_tf32(False)
    failed = 0
    img, batch = cfg['model_img'], cfg['model_batch']
    for name in ('vmamba', 'vim'):
        if budget.left() < 0:
            return 'out_of_time'
        with rec.guard(f'{name} triton vs torch'):
            x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(1))
            x = x.to(device)
            results, weights = {}, None
            for backend in ('triton', 'torch'):
                torch.manual_seed(0)
                m = (build_vmamba(cfg, backend=backend) if name == 'vmamba'
                     else build_vim(cfg, img, backend=backend))
                if weights is None:
                    weights = m.state_dict()
                m.load_state_dict(weights)
                m = m.to(device).train()
                out = m(x)
                w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
                (out * w.to(device)).sum().backward()
                results[backend] = (out.detach(), {k: p.grad.detach() for k, p in
                                                   m.named_parameters() if p.grad is not None})
            (out_t, g_t), (out_r, g_r) = results['triton'], results['torch']
            grad_errs = {k: ((g_t[k] - g_r[k]).norm() / (g_r[k].norm() + 1e-12)).item()
                         for k in g_r}
            worst = max(grad_errs, key=grad_errs.get)
            out_err = rel_err(out_t, out_r)
            ok = out_err < 1e-3 and grad_errs[worst] < 1e-2 and set(g_t) == set(g_r)
            failed += not ok
            rec.add(model=name, batch=batch, img=img, ok=bool(ok), out_rel_err=out_err,
                    max_grad_rel_err=grad_errs[worst], worst_param=worst,
                    median_grad_rel_err=sorted(grad_errs.values())[len(grad_errs) // 2])
    return 'ok' if failed == 0 and not rec.data['errors'] else 'failed'


def copy_bandwidth(device, nbytes):
    """Device-to-device copy: (bytes read + written) per second."""
    import torch
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t, _ = timeit(lambda: y.copy_(x), device, target_s=0.3)
    return 2 * x.numel() * 4 / t


def scan_bytes(batch, dim, L, N, G, z, elem):
    """Bytes the forward pass must move: u, delta, (z,) B, C in, out."""
    return (batch * dim * L * (3 + z) + 2 * batch * G * N * L) * elem


def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn
    except Exception:  # noqa: BLE001 - optional anchor
        return None


def stage_bench_scan(rec, cfg, budget):
    import torch
    from vmamba_mm.ops import selective_scan
    device = cfg['device']
    bw = copy_bandwidth(device, cfg['copy_bytes'])
    rec.add(what='copy', bytes_per_s=bw, nbytes=cfg['copy_bytes'])
    mamba = _mamba_ssm_scan() if device.type == 'cuda' else None
    rec.data['meta']['mamba_ssm'] = 'importable' if mamba else 'not importable'
    runners = [('triton', 'channel_major'), ('triton', 'time_major'), ('torch', 'channel_major')]
    if mamba is not None:
        runners.append(('mamba_ssm', 'channel_major'))
    for shape_name, (batch, dim, L, N, G, z) in cfg['scan_shapes'].items():
        for dtype_name in cfg['bench_dtypes']:
            dtype = _dtype(dtype_name)
            base = {}
            for backend, layout in runners:
                if budget.left() < 0:
                    return 'out_of_time'
                label = f'{shape_name} {dtype_name} {backend} {layout}'
                with rec.guard(label):
                    dev = bench_inputs(batch, dim, L, N, G, z, dtype, layout, device)

                    def call(args):
                        kw = dict(D=args['D'], z=args['z'], delta_bias=args['delta_bias'],
                                  delta_softplus=True)
                        if backend == 'mamba_ssm':
                            return mamba(args['u'], args['delta'], args['A'], args['B'],
                                         args['C'], **kw)
                        return selective_scan(args['u'], args['delta'], args['A'], args['B'],
                                              args['C'], backend=backend, layout=layout, **kw)

                    def fwd():
                        with torch.no_grad():
                            call(dev)

                    grad_args = {k: v.detach().requires_grad_() if v is not None else None
                                 for k, v in dev.items()}
                    dout = torch.randn_like(call(dev))

                    def fwd_bwd():
                        for v in grad_args.values():
                            if v is not None:
                                v.grad = None
                        call(grad_args).backward(dout)

                    t_f, reps_f = timeit(fwd, device, target_s=0.25)
                    mem_f = peak_memory(fwd, device)
                    t_fb, reps_fb = timeit(fwd_bwd, device, target_s=0.25)
                    mem_fb = peak_memory(fwd_bwd, device)
                    moved = scan_bytes(batch, dim, L, N, G, z, dtype.itemsize)
                    if backend == 'torch':
                        base = dict(fwd=t_f, fwd_bwd=t_fb)
                    r = dict(shape=shape_name, dims=[batch, dim, L, N, G, z], dtype=dtype_name,
                             backend=backend, layout=layout, fwd_s=t_f, fwd_bwd_s=t_fb,
                             reps=[reps_f, reps_fb], fwd_bytes_per_s=moved / t_f,
                             fwd_fraction_of_copy=moved / t_f / bw,
                             peak_mem_fwd=mem_f, peak_mem_fwd_bwd=mem_fb)
                    rec.add(**r)
            # ratios against torch and mamba_ssm for this shape/dtype
            rows = [r for r in rec.data['records'] if r.get('shape') == shape_name
                    and r.get('dtype') == dtype_name]
            by = {(r['backend'], r['layout']): r for r in rows}
            for r in rows:
                if base:
                    r['speedup_vs_torch'] = dict(fwd=base['fwd'] / r['fwd_s'],
                                                 fwd_bwd=base['fwd_bwd'] / r['fwd_bwd_s'])
                m = by.get(('mamba_ssm', 'channel_major'))
                if m:
                    r['speedup_vs_mamba_ssm'] = dict(fwd=m['fwd_s'] / r['fwd_s'],
                                                     fwd_bwd=m['fwd_bwd_s'] / r['fwd_bwd_s'])
            rec.flush()
    return 'ok' if not rec.data['errors'] else 'partial'


def _timm_model(name, cfg, img):
    import timm
    kw = dict(pretrained=False)
    kw.update(cfg['timm_kwargs'].get(name, {}))
    if name.startswith('deit'):
        kw['img_size'] = img
    return timm.create_model(name, **kw)


def _bench_model(rec, label, model, cfg, batch, img, mode, dtype_name, extra):
    import torch
    device = cfg['device']
    x = torch.randn(batch, 3, img, img, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype_name == 'bfloat16'
                else contextlib.nullcontext())
    if mode == 'inference':
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        target = torch.randint(0, 1000, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x).float(), target)
            loss.backward()
            opt.step()
    t, reps = timeit(step, device, target_s=cfg['bench_target_s'], max_reps=20)
    mem = peak_memory(step, device)
    rec.add(model=label, mode=mode, dtype=dtype_name, batch=batch, img=img,
            img_per_s=batch / t, step_s=t, reps=reps, peak_mem=mem, tf32=tf32_state(), **extra)
    return batch / t


def stage_bench_backbones(rec, cfg, budget):
    import torch
    device = cfg['device']
    set_tf32(True)
    rec.data['meta']['tf32'] = tf32_state()
    img, batch = cfg['bench_img'], cfg['bench_batch']
    models = [('VMamba-T', lambda: build_vmamba(cfg))]
    models += [(n, (lambda n=n: _timm_model(n, cfg, img))) for n in cfg['cnn_baselines']]
    for label, make in models:
        with rec.guard(f'build {label}'):
            torch.manual_seed(0)
            model = make().to(device)
            for mode in ('inference', 'train'):
                for dtype_name in cfg['bench_dtypes']:
                    if budget.left() < 0:
                        return 'out_of_time'
                    with rec.guard(f'{label} {mode} {dtype_name}'):
                        _bench_model(rec, label, model, cfg, batch, img, mode, dtype_name,
                                     dict(group='vmamba_vs_timm'))
            del model
            torch.cuda.empty_cache() if device.type == 'cuda' else None
    # Vim-Ti vs DeiT-Ti over resolutions (batch inference; time and peak memory).
    for res in cfg['vim_resolutions']:
        for label in ('Vim-Ti', *cfg['vit_baselines']):
            for dtype_name in cfg['bench_dtypes']:
                if budget.left() < 0:
                    return 'out_of_time'
                with rec.guard(f'{label} {res} {dtype_name}'):
                    torch.manual_seed(0)
                    if label == 'Vim-Ti':
                        model = build_vim(cfg, res)
                    elif label.endswith('(unfused attention)'):
                        import timm.layers
                        timm.layers.set_fused_attn(False)
                        try:
                            model = _timm_model(label.split()[0], cfg, res)
                        finally:
                            timm.layers.set_fused_attn(True)
                    else:
                        model = _timm_model(label, cfg, res)
                    model = model.to(device)
                    _bench_model(rec, label, model, cfg, cfg['vim_batch'], res, 'inference',
                                 dtype_name, dict(group='vim_vs_deit'))
                    del model
            rec.data['ratios'] = backbone_ratios(rec.data['records'])
            rec.flush()
    rec.data['ratios'] = backbone_ratios(rec.data['records'])
    return 'ok' if not rec.data['errors'] else 'partial'


def backbone_ratios(records):
    """The issue's goals from the records: VMamba-T / Swin-T and ConvNeXt-T speed
    (img/s ratio), Vim-Ti / DeiT-Ti speed and memory saving per resolution."""
    by = {(r['model'], r['mode'], r['dtype'], r['img']): r for r in records}
    out = []
    for (model, mode, dtype, img), r in by.items():
        if model == 'VMamba-T':
            for other in ('swin_tiny_patch4_window7_224', 'convnext_tiny'):
                o = by.get((other, mode, dtype, img))
                if o:
                    out.append(dict(model=model, vs=other, mode=mode, dtype=dtype, img=img,
                                    speed_ratio=r['img_per_s'] / o['img_per_s']))
        if model == 'Vim-Ti':
            for (other, o_mode, o_dtype, o_img), o in by.items():
                if other.startswith('deit') and (o_mode, o_dtype, o_img) == (mode, dtype, img):
                    out.append(dict(model=model, vs=other, mode=mode, dtype=dtype, img=img,
                                    speed_ratio=r['img_per_s'] / o['img_per_s'],
                                    memory_saving=(1 - r['peak_mem'] / o['peak_mem']
                                                   if r['peak_mem'] and o['peak_mem'] else None)))
    return out


def stage_mixed_precision(rec, cfg, budget):
    import torch
    device = cfg['device']
    set_tf32(True)
    steps, batch, img = cfg['amp_steps'], cfg['amp_batch'], cfg['amp_img']
    failed = 0
    for name in ('vmamba', 'vim'):
        for dtype_name in ('float16', 'bfloat16'):
            if budget.left() < 0:
                return 'out_of_time'
            with rec.guard(f'{name} {dtype_name}'):
                torch.manual_seed(0)
                model = build_vmamba(cfg) if name == 'vmamba' else build_vim(cfg, img)
                model = model.to(device).train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                scaler = torch.amp.GradScaler(device.type, enabled=dtype_name == 'float16')
                gen = torch.Generator().manual_seed(3)
                data = [(torch.randn(batch, 3, img, img, generator=gen).to(device),
                         torch.randint(0, 1000, (batch,), generator=gen).to(device))
                        for _ in range(4)]  # a fixed set: the loss must fall
                losses, skipped, run, longest, nonfinite = [], 0, 0, 0, 0
                start = time.perf_counter()
                for i in range(steps):
                    x, y = data[i % len(data)]
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=_dtype(dtype_name)):
                        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    value = loss.item()
                    losses.append(value)
                    nonfinite += not torch.isfinite(torch.tensor(value)).item()
                    was_skipped = scaler.is_enabled() and scaler.get_scale() < scale
                    skipped += was_skipped
                    run = run + 1 if was_skipped and i >= cfg['amp_warmup'] else 0
                    longest = max(longest, run)
                    if budget.left() < 0:
                        break
                ok = nonfinite == 0 and longest <= 1 and len(losses) == steps
                failed += not ok
                rec.add(model=name, dtype=dtype_name, steps=len(losses), batch=batch, img=img,
                        ok=bool(ok), nonfinite_losses=nonfinite, skipped_steps=skipped,
                        longest_skip_run_after_warmup=longest,
                        first_loss=losses[0], last_loss=losses[-1],
                        min_loss=min(losses), seconds=time.perf_counter() - start,
                        final_scale=scaler.get_scale() if scaler.is_enabled() else None,
                        losses_every_10=losses[::10])
                del model, opt
    return 'ok' if failed == 0 and not rec.data['errors'] else 'failed'


def stage_tune_tiles(rec, cfg, budget):
    """Time the scan kernels over tile sizes / warps (bf16, both layouts)."""
    import torch
    from vmamba_mm.ops.selective_scan import kernels as K
    device = cfg['device']
    original = K.block_sizes
    try:
        for shape_name in cfg['tune_shapes']:
            batch, dim, L, N, G, z = cfg['scan_shapes'][shape_name]
            for layout in ('channel_major', 'time_major'):
                tm = layout == 'time_major'
                dev = bench_inputs(batch, dim, L, N, G, z, torch.bfloat16, layout, device)
                args = [dev[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')]
                dout = torch.randn_like(dev['u'])
                for BLOCK_L, BLOCK_D, warps in cfg['tune_candidates'][N > 4]:
                    if budget.left() < 0:
                        return 'out_of_time'
                    if (dim // G) % BLOCK_D:
                        continue
                    label = f'{shape_name} {layout} L{BLOCK_L} D{BLOCK_D} w{warps}'
                    with rec.guard(label):
                        def sizes(dim_, G_, N_, backward, time_major, interpreted=None,
                                  _c=(BLOCK_L, BLOCK_D, warps)):
                            return dict(BLOCK_D=_c[1], BLOCK_L=_c[0],
                                        NP=original(dim_, G_, N_, backward, time_major,
                                                    interpreted)['NP'], num_warps=_c[2])
                        K.block_sizes = sizes
                        grid, a, kw, outs = K.fwd_launch(*args, True, tm, False)
                        kernel = K._fwd_kernel[grid](*a, **kw)
                        t_f, _ = timeit(lambda: K._fwd_kernel[grid](*a, **kw), device,
                                        target_s=0.2)
                        _, _, (states, ) = K.scan_fwd(*args, True, tm, True)
                        grid_b, ab, kwb, _ = K.bwd_launch(dout, None, *args, states, True, tm)
                        kernel_b = K._bwd_kernel[grid_b](*ab, **kwb)
                        t_b, _ = timeit(lambda: K._bwd_kernel[grid_b](*ab, **kwb), device,
                                        target_s=0.2)
                        rec.add(shape=shape_name, layout=layout, BLOCK_L=BLOCK_L,
                                BLOCK_D=BLOCK_D, num_warps=warps, fwd_s=t_f, bwd_kernel_s=t_b,
                                regs=[getattr(kernel, 'n_regs', None),
                                      getattr(kernel_b, 'n_regs', None)],
                                spills=[getattr(kernel, 'n_spills', None),
                                        getattr(kernel_b, 'n_spills', None)],
                                default={k: (BLOCK_L, BLOCK_D, warps) == _default(
                                    original, dim, G, N, tm, k == 'bwd') for k in ('fwd', 'bwd')})
                    K.block_sizes = original
    finally:
        K.block_sizes = original
    return 'ok' if not rec.data['errors'] else 'partial'


def _default(block_sizes, dim, G, N, tm, backward):
    """(BLOCK_L, BLOCK_D, num_warps) that ``block_sizes`` picks for this kernel."""
    d = block_sizes(dim, G, N, backward, tm)
    return d['BLOCK_L'], d['BLOCK_D'], d['num_warps']


STAGE_FNS = {name: globals()[f'stage_{name}'] for name in STAGES}
# Seconds each stage may use at most (the total budget caps them all).
STAGE_BUDGET = {'env': 10, 'correctness_ops': 120, 'correctness_models': 60, 'bench_scan': 120,
                'bench_backbones': 120, 'mixed_precision': 90, 'tune_tiles': 120}


def make_config(smoke, device):
    if not smoke:
        return dict(
            smoke=False, device=device, dtypes=['float32', 'float16', 'bfloat16'],
            op_cases=OP_CASES, cross_shapes=[(2, 96, 56, 56), (2, 64, 13, 9)],
            vmamba_arch='tiny', vim_arch='tiny', model_img=224, model_batch=2,
            scan_shapes=SCAN_SHAPES, bench_dtypes=['float32', 'bfloat16'],
            copy_bytes=1 << 30, bench_img=224, bench_batch=128, bench_target_s=1.0,
            cnn_baselines=['swin_tiny_patch4_window7_224', 'convnext_tiny'],
            vit_baselines=['deit_tiny_patch16_224', 'deit_tiny_patch16_224 (unfused attention)'],
            timm_kwargs={}, vim_resolutions=[1248, 224, 512, 768, 1024], vim_batch=16,
            amp_steps=300, amp_batch=32, amp_img=224, amp_warmup=20,
            tune_shapes=['vmamba_t_s1', 'vmamba_t_s3', 'vim_ti_224', 'vim_ti_1248'],
            # (BLOCK_L, BLOCK_D, num_warps) for N <= 4 and for N = 16; bigger BLOCK_D
            # and shorter chunks favour the time-major loads (coalesced along channels).
            tune_candidates={False: [(64, 16, 4), (64, 8, 4), (64, 16, 8), (64, 32, 4),
                                     (64, 32, 8), (32, 16, 4), (32, 32, 4), (16, 32, 4),
                                     (128, 8, 4), (128, 16, 8)],
                             True: [(32, 4, 4), (32, 2, 4), (32, 4, 8), (32, 8, 8), (16, 8, 4),
                                    (16, 16, 8), (64, 2, 4), (64, 4, 8)]})
    tiny_vmamba = dict(depths=(1, 1, 1, 1), dims=4, d_state=1, ssm_ratio=1.0, mlp_ratio=2.0)
    tiny_vim = dict(embed_dims=8, num_layers=2, d_state=4, expand=2)
    return dict(
        smoke=True, device=device, dtypes=['float32', 'bfloat16'], op_cases=SMOKE_OP_CASES,
        cross_shapes=[(1, 3, 5, 7)], vmamba_arch=tiny_vmamba, vim_arch=tiny_vim,
        model_img=32, model_batch=1, scan_shapes=SMOKE_SCAN_SHAPES, bench_dtypes=['float32'],
        copy_bytes=1 << 20, bench_img=32, bench_batch=1,
        bench_target_s=0.01, cnn_baselines=['swin_tiny_patch4_window7_224'],
        vit_baselines=['deit_tiny_patch16_224 (unfused attention)'],
        timm_kwargs={'swin_tiny_patch4_window7_224': dict(img_size=32, window_size=1)},
        vim_resolutions=[32], vim_batch=1, amp_steps=3, amp_batch=1, amp_img=32, amp_warmup=3,
        tune_shapes=['tiny'], tune_candidates={False: [(16, 4, 4)], True: [(16, 2, 4)]})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=os.path.join(ROOT, 'work_dirs', 'gpu_check'),
                        help='folder for the JSON records (default work_dirs/gpu_check)')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes on CPU (torch backend + Triton interpreter)')
    parser.add_argument('--only', help=f'comma-separated stages to run, of {",".join(STAGES)}')
    parser.add_argument('--skip', help='comma-separated stages to leave out')
    parser.add_argument('--budget-s', type=float, default=480,
                        help='wall-clock budget of the whole run (default 480 s)')
    args = parser.parse_args(argv)
    chosen = list(STAGES)
    for opt in ('only', 'skip'):
        names = [s for s in (getattr(args, opt) or '').split(',') if s]
        unknown = set(names) - set(STAGES)
        if unknown:
            parser.error(f'--{opt}: unknown stages {sorted(unknown)}; choose from {STAGES}')
        if opt == 'only' and names:
            chosen = [s for s in STAGES if s in names]
        elif opt == 'skip':
            chosen = [s for s in chosen if s not in names]
    if args.smoke:
        # Before triton is imported: the interpreter runs the kernels on CPU tensors.
        os.environ['TRITON_INTERPRET'] = '1'
        TIMING.update(warmup=0, min_reps=1)
    sys.path.insert(0, ROOT)
    import torch
    device = torch.device('cpu' if args.smoke or not torch.cuda.is_available() else 'cuda')
    if not args.smoke and device.type != 'cuda':
        parser.error('no CUDA device: use --smoke for the CPU dry run')
    os.makedirs(args.out, exist_ok=True)
    cfg = make_config(args.smoke, device)
    budget = Budget(args.budget_s)
    meta = dict(command=' '.join(sys.argv), smoke=args.smoke, budget_s=args.budget_s)
    summary = {}
    for i, name in enumerate(chosen):
        if budget.left() <= 0:
            summary[name] = 'not_run (budget)'
            continue
        print(f'== {name} ({budget.left():.0f} s left)', flush=True)
        rec = Recorder(args.out, name, meta)
        stage_budget = Budget(budget.left() if args.smoke
                              else min(budget.left(), STAGE_BUDGET[name]))
        try:
            status = STAGE_FNS[name](rec, cfg, stage_budget)
        except Exception as e:  # noqa: BLE001 - a broken stage must not stop the others
            rec.data['errors'].append(dict(label='stage', error=f'{type(e).__name__}: {e}',
                                           traceback=traceback.format_exc()[-3000:]))
            status = 'error'
        rec.finish(status)
        summary[name] = status
        print(f'== {name}: {status} in {rec.data["seconds"]:.1f} s', flush=True)
        write_summary(args.out, meta, summary)
        rest = chosen[i + 1:]
        if rest and device_broken(device):
            # A sticky CUDA error (e.g. an illegal address) poisons this process's
            # context: run the remaining stages in a fresh process.
            print(f'== CUDA context unusable after {name}: restarting for {rest}', flush=True)
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), '--out',
                                      args.out, '--only', ','.join(rest),
                                      '--budget-s', str(max(budget.left(), 0))])
    write_summary(args.out, meta, summary)
    print(json.dumps(summary))
    return 0 if all(s == 'ok' for s in summary.values()) else 1


def write_summary(out, meta, statuses):
    """``OUT/summary.json``: every stage's latest status (earlier runs into the same
    folder included) and the commands that produced them."""
    path = os.path.join(out, 'summary.json')
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    stages = dict(old.get('stages', {}), **statuses)
    runs = [r for r in old.get('runs', []) if r != meta] + [meta]
    with open(path, 'w') as f:
        json.dump(dict(stages=stages, runs=runs), f, indent=1)


def device_broken(device):
    """Whether the CUDA context can no longer run a trivial kernel."""
    import torch
    if device.type != 'cuda':
        return False
    try:
        torch.cuda.synchronize()
        return (torch.ones(1, device=device) + 1).item() != 2
    except Exception:  # noqa: BLE001 - any failure means: start afresh
        return True


if __name__ == '__main__':
    sys.exit(main())
