"""The 'cpu' backend of the selective scan: a fused C++ kernel, built on first use.

``csrc/scan_cpu.cpp`` runs the whole recurrence in one pass over the sequence per
block of consecutive channels (the state in registers, a vectorised exp, the
softplus of delta, the D skip and the z gate fused in), on PyTorch's intra-op
thread pool. The forward with gradients keeps only the state entering every
chunk of :data:`CHUNK` steps; the backward recomputes each chunk's states from it
(see the file's header and ``docs/ops.md``).

Built with ``torch.utils.cpp_extension`` for the instruction set PyTorch detects
on the running CPU (``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or
generic), with the flags that select ATen's matching ``Vectorized`` code, and
cached per instruction set, source and torch version under
``$VMAMBA_MM_CACHE/extensions`` (default ``~/.cache/vmamba_mm``), so a cache built
on one CPU never runs on a CPU that lacks its instructions.
``python -m vmamba_mm.ops.selective_scan.cpu`` builds it ahead of time
(``tools/setup_env.sh`` does).
"""
import hashlib
import logging
import math
import os
import os.path as osp
import threading

import torch

NUM_RESIDUALS = 1
CHUNK = 64  # steps between kept states: memory (batch, ceil(L / CHUNK), N, dim)

_SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'scan_cpu.cpp')
_FLAGS = {
    'AVX512': ['-DCPU_CAPABILITY=AVX512', '-DCPU_CAPABILITY_AVX512', '-mavx512f', '-mavx512bw',
               '-mavx512vl', '-mavx512dq', '-mfma'],
    'AVX2': ['-DCPU_CAPABILITY=AVX2', '-DCPU_CAPABILITY_AVX2', '-mavx2', '-mfma', '-mf16c'],
}
FIX = ('install a C++ compiler and ninja (e.g. `apt-get install g++` and `pip install ninja`), '
       'then run `python -m vmamba_mm.ops.selective_scan.cpu` to build it')

_lock = threading.Lock()
_state = {}  # 'ops' (the loaded operators) or 'error' (why they cannot be built)


def capability():
    """The instruction set the kernel is built for: PyTorch's choice for this CPU
    ('AVX512', 'AVX2'; anything else builds ATen's generic vector code)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in _FLAGS else 'DEFAULT'


def build_flags(cap=None):
    """Compiler flags for instruction set ``cap`` (default: this CPU's)."""
    cap = capability() if cap is None else cap
    return ['-O3', '-fopenmp', '-std=c++17'] + _FLAGS.get(cap, [])


def extension_name(cap=None):
    """The cache key: instruction set, source, flags and torch version."""
    cap = capability() if cap is None else cap
    with open(_SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read())
    digest.update(' '.join(build_flags(cap) + [torch.__version__]).encode())
    return f'vmamba_mm_scan_cpu_{cap.lower()}_{digest.hexdigest()[:12]}'


def cache_dir():
    root = os.environ.get('VMAMBA_MM_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'vmamba_mm')
    return osp.join(root, 'extensions', extension_name())


def _build():
    """Compile (or load the cached build of) the kernel; return its operators."""
    # Importing cpp_extension logs a warning about CUDA on machines without it:
    # irrelevant to a CPU build.
    cpp_logger = logging.getLogger('torch.utils.cpp_extension')
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)
    build_dir = cache_dir()
    os.makedirs(build_dir, exist_ok=True)
    cpp_extension.load(name=extension_name(), sources=[_SOURCE], extra_cflags=build_flags(),
                       extra_ldflags=['-fopenmp'], build_directory=build_dir,
                       is_python_module=False, verbose=False)
    return torch.ops.vmamba_mm_scan_cpu


def load_error():
    """None when the kernel is built (building it now, once per process, if needed),
    else why it cannot be and the fix."""
    with _lock:
        if not _state:
            try:
                _state['ops'] = _build()
            except Exception as e:  # the compiler's or ninja's own error (its end)
                text = f'{type(e).__name__}: {e}'.strip()
                _state['error'] = text if len(text) < 1500 else '...' + text[-1500:]
    if 'error' in _state:
        return (f"selective_scan backend 'cpu': the C++ kernel could not be built "
                f"({_state['error']}); {FIX}")
    return None


def load():
    """The kernel's operators, built on first use.

    Raises:
        RuntimeError: it cannot be built here; the message names the cause and the fix.
    """
    why = load_error()
    if why is not None:
        raise RuntimeError(f"{why}, or choose another backend (backend='torch' / "
                           f'VMAMBA_MM_SCAN_BACKEND=torch)')
    return _state['ops']


# ---------------------------------------------------------------- backend entry points
def _acc(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _seq(t, time_major, acc):
    """A (batch, L, dim) view of a sequence tensor in ``acc`` (the kernel reads any
    strides: channel-major ones in place, without a transposing copy)."""
    if t is None:
        return None
    return (t if time_major else t.transpose(1, 2)).to(acc)


def _prepare(u, delta, A, B, C, D, z, delta_bias, time_major):
    acc = _acc(u)
    if not time_major:
        B, C = B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2)  # (batch, L, G, N) views
    vec = (lambda t: None if t is None else t.to(acc).contiguous())
    return (acc, _seq(u, time_major, acc), _seq(delta, time_major, acc),
            A.to(acc).t().contiguous(), B.to(acc), C.to(acc), vec(D), _seq(z, time_major, acc),
            vec(delta_bias))


def _out_layout(t, time_major, dtype):
    return (t if time_major else t.transpose(1, 2)).to(dtype).contiguous()


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, time_major, save):
    """Backend entry (see ``op.py``); the residual is the state entering every chunk,
    (batch, ceil(L / CHUNK), N, dim)."""
    ops = load()
    acc, *args = _prepare(u, delta, A, B, C, D, z, delta_bias, time_major)
    out, last, kept = ops.scan_fwd(*args, bool(delta_softplus), CHUNK, bool(save),
                                   bool(time_major))
    return _out_layout(out, time_major, u.dtype), last, ((kept, ) if save else ())


def fake_residuals(u, A, time_major):
    batch = u.shape[0]
    L, dim = (u.shape[1], u.shape[2]) if time_major else (u.shape[2], u.shape[1])
    return (u.new_empty(batch, (L + CHUNK - 1) // CHUNK, A.shape[1], dim, dtype=_acc(u)), )


def splits(batch, groups, group_dim, threads=None):
    """How many parts the backward splits each group's channel blocks into: enough
    tasks (batch x groups x parts) for every thread, never more parts than blocks."""
    threads = torch.get_num_threads() if threads is None else threads
    blocks = math.ceil(group_dim / load().vector_width())
    return max(1, min(blocks, math.ceil(threads / (batch * groups))))


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, kept, delta_softplus, time_major):
    """Backend entry: every gradient from the kept chunk states (one fused pass)."""
    ops = load()
    acc, u_, delta_, At, B_, C_, D_, z_, bias_ = _prepare(u, delta, A, B, C, D, z, delta_bias,
                                                          time_major)
    dout_ = _seq(dout, time_major, acc)
    dlast_ = None if dlast is None else dlast.to(acc).contiguous()
    batch, G = B_.shape[0], B_.shape[2]
    parts = splits(batch, G, u_.shape[2] // G)
    du, ddelta, dAt, dB, dC, dD, dz, dbias = ops.scan_bwd(
        dout_, dlast_, u_, delta_, At, B_, C_, D_, z_, bias_, kept, bool(delta_softplus), CHUNK,
        parts, bool(time_major))
    dB, dC = (t[0] if parts == 1 else t.sum(0) for t in (dB, dC))
    if not time_major:
        dB, dC = dB.permute(0, 2, 3, 1), dC.permute(0, 2, 3, 1)
    return (_out_layout(du, time_major, u.dtype), _out_layout(ddelta, time_major, delta.dtype),
            dAt.sum(0).t().to(A.dtype), dB.to(B.dtype).contiguous(), dC.to(C.dtype).contiguous(),
            None if D is None else dD.sum(0).to(D.dtype),
            None if z is None else _out_layout(dz, time_major, z.dtype),
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))


if __name__ == '__main__':
    import time
    start = time.perf_counter()
    ops = load()
    print(f'[vmamba_mm] C++ CPU scan ready ({ops.capability()}, {ops.vector_width()} float lanes; '
          f'{time.perf_counter() - start:.1f} s) in {cache_dir()}')
