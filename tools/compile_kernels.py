"""Compile the Triton kernels ahead of time for NVIDIA GPUs, without a GPU.

Builds every kernel specialisation that VMamba-T/S/B and Vim-Ti/S launch at
their real shapes (224^2 and, for Vim, 1248^2; both layouts; fp32/fp16/bf16;
the selective scan with and without z, forward with and without saved
states, backward; cross-scan and cross-merge) for the given architectures,
runs ``ptxas -v`` on each and reports registers, spills and shared memory.
The launches come from the kernels' own launch helpers on meta tensors, and
the specialisation (constexprs, ints equal to 1, 16-divisibility) from
Triton's own binder, so what is compiled is what a GPU run compiles. Each
distinct specialisation is compiled once.

Needs a Triton build with the NVIDIA backend (``ptxas`` ships with it); run
without ``TRITON_INTERPRET=1``. Triton's private launch helpers
(``create_function_from_signature``, ``JITFunction._pack_args``) are used;
checked with Triton 3.6-3.7.

Examples::

    python tools/compile_kernels.py                      # sm_80 + sm_90, full matrix
    python tools/compile_kernels.py --arch 90 --quick    # bf16 only
    python tools/compile_kernels.py --json docs/benchmarks/triton_aot_sm80_sm90.json
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import types

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

# Shared memory per block (bytes) that each architecture allows.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

# name: (d_inner per stage or model, N, G, sequence lengths, maps (H, W) for cross-scan)
# VMamba: 4 directions folded into dim (dim = 4 d_inner, G = 4), N = 1; stages at 224^2.
# Vim: both directions stacked (dim = 2 d_inner, G = 2), N = 16, class token (L = HW + 1).
MODELS = {
    'vmamba_t': dict(d_inner=(96, 192, 384, 768), N=1, G=4, maps=(56, 28, 14, 7)),
    'vmamba_s': dict(d_inner=(192, 384, 768, 1536), N=1, G=4, maps=(56, 28, 14, 7)),
    'vmamba_b': dict(d_inner=(256, 512, 1024, 2048), N=1, G=4, maps=(56, 28, 14, 7)),
    'vim_ti': dict(d_inner=(384,), N=16, G=2, maps=(14, 78)),
    'vim_s': dict(d_inner=(768,), N=16, G=2, maps=(14, 78)),
}


def _import_ops():
    """vmamba_mm.ops without the package's __init__ (no models, no OpenMMLab)."""
    if 'vmamba_mm' not in sys.modules:
        package = types.ModuleType('vmamba_mm')
        package.__path__ = [os.path.join(ROOT, 'vmamba_mm')]
        sys.modules['vmamba_mm'] = package
    from vmamba_mm.ops.cross_scan import kernels as cross
    from vmamba_mm.ops.selective_scan import kernels as scan
    return scan, cross


def launches(dtypes, batch=2):
    """(label, kernel, args, kwargs) of every launch of the models' shapes."""
    import torch
    scan, cross = _import_ops()
    meta = dict(device='meta')
    for model, cfg in MODELS.items():
        N, G = cfg['N'], cfg['G']
        vim = model.startswith('vim')
        for i, d_inner in enumerate(cfg['d_inner']):
            dim = G * d_inner
            maps = cfg['maps'] if vim else (cfg['maps'][i],)
            for hw in maps:
                L = hw * hw + (1 if vim else 0)
                for dtype in dtypes:
                    for time_major in (False, True):
                        seq = (batch, L, dim) if time_major else (batch, dim, L)
                        bc = (batch, L, G, N) if time_major else (batch, G, N, L)
                        u = torch.empty(seq, dtype=dtype, **meta)
                        B = torch.empty(bc, dtype=dtype, **meta)
                        A = torch.empty(dim, N, **meta)
                        D = torch.empty(dim, **meta)
                        layout = 'time_major' if time_major else 'channel_major'
                        for z in (None, u):
                            tag = f'{model} d{dim} L{L} {str(dtype)[6:]} {layout} z={z is not None}'
                            for save in (True, False):
                                _, args, kw, _ = scan.fwd_launch(
                                    u, u, A, B, B, D, z, D, True, time_major, save)
                                yield f'scan_fwd {tag} save={save}', scan._fwd_kernel, args, kw
                            states = torch.empty(scan.states_shape(batch, dim, L, N), **meta)
                            _, args, kw, _ = scan.bwd_launch(
                                u, None, u, u, A, B, B, D, z, D, states, True, time_major)
                            yield f'scan_bwd {tag}', scan._bwd_kernel, args, kw
                        if not vim:  # VMamba's cross-scan / cross-merge on the stage's map
                            if time_major:
                                x = torch.empty(batch, hw, hw, d_inner, dtype=dtype, **meta)
                                ys = torch.empty(batch, hw, hw, 4, d_inner, dtype=dtype, **meta)
                            else:
                                x = torch.empty(batch, d_inner, hw, hw, dtype=dtype, **meta)
                                ys = torch.empty(batch, 4, d_inner, hw, hw, dtype=dtype, **meta)
                            _, args, kw, _ = cross.cross_scan_launch(x, time_major)
                            yield (f'cross_scan {model} C{d_inner} {hw}x{hw} {str(dtype)[6:]} '
                                   f'{layout}', cross._cross_scan_kernel, args, kw)
                            _, args, kw, _ = cross.cross_merge_launch(ys, time_major)
                            yield (f'cross_merge {model} C{d_inner} {hw}x{hw} {str(dtype)[6:]} '
                                   f'{layout}', cross._cross_merge_kernel, args, kw)


def _specialise(fn, args, kw, arch):
    """Triton's own specialisation of a launch: (signature, constexprs, attrs, options)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature
    target = GPUTarget('cuda', arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    # Tensors as dtype-only mocks (16-byte aligned pointers, as CUDA allocations are).
    args = [MockTensor(a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
    bound, spec, opts = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return target, signature, constexprs, attrs, options


def _ptxas(ptx, arch):
    """ptxas -v on the PTX: (registers, spill store bytes, spill load bytes)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'k.ptx')
        with open(src, 'w') as f:
            f.write(ptx)
        gpu = sm_arch_from_capability(arch)
        res = subprocess.run([get_ptxas(arch).path, '-v', f'--gpu-name={gpu}', src,
                              '-o', os.path.join(tmp, 'k.o')],
                             capture_output=True, text=True, check=True)
    regs = re.search(r'Used (\d+) registers', res.stderr)
    spills = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', res.stderr)
    if regs is None or spills is None:
        raise RuntimeError(f'cannot parse the ptxas report:\n{res.stderr}')
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def compile_all(archs, dtypes, log=print):
    """Compile each distinct specialisation once per architecture; one record each."""
    import triton
    from triton.compiler import ASTSource
    records, seen = [], {}
    for label, fn, args, kw in launches(dtypes):
        for arch in archs:
            target, signature, constexprs, attrs, options = _specialise(fn, args, kw, arch)
            key = (fn.__name__, arch, tuple(sorted(signature.items())),
                   tuple(sorted(constexprs.items())), repr(sorted(attrs.items())),
                   options.num_warps)
            if key in seen:
                seen[key]['launches'].append(label)
                continue
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            regs, spill_st, spill_ld = _ptxas(compiled.asm['ptx'], arch)
            rec = dict(kernel=fn.__name__, arch=arch, registers=regs, spill_stores=spill_st,
                       spill_loads=spill_ld, shared=compiled.metadata.shared,
                       shared_limit=SHARED_LIMIT[arch], num_warps=options.num_warps,
                       constexprs={k: v for k, v in kw.items() if k != 'num_warps'},
                       launches=[label])
            seen[key] = rec
            records.append(rec)
            log(f'sm_{arch} {fn.__name__:20s} regs {regs:3d} spills {spill_st}/{spill_ld} '
                f'smem {rec["shared"]:6d}  {label}')
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90],
                        choices=sorted(SHARED_LIMIT), help='compute capabilities')
    parser.add_argument('--quick', action='store_true', help='bf16 only')
    parser.add_argument('--json', default=os.path.join(ROOT, 'work_dirs', 'compile_kernels.json'),
                        help='file for the records ("-": stdout; default '
                        'work_dirs/compile_kernels.json)')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':
        parser.error('unset TRITON_INTERPRET: the interpreter does not compile')
    import torch
    dtypes = ([torch.bfloat16] if args.quick
              else [torch.float32, torch.float16, torch.bfloat16])
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json == '-' else print
    records = compile_all(args.arch, dtypes, log=log)
    bad = [r for r in records if r['spill_stores'] or r['spill_loads']
           or r['shared'] > r['shared_limit']]
    log(f'{len(records)} specialisations, {len(bad)} with spills or too much shared memory')
    import triton
    doc = dict(command='python tools/compile_kernels.py ' + ' '.join(argv or sys.argv[1:]),
               versions=dict(triton=triton.__version__, torch=torch.__version__),
               archs=args.arch, specialisations=len(records), with_problems=len(bad),
               records=records)
    if args.json == '-':
        json.dump(doc, sys.stdout)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(doc, f, indent=1)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
