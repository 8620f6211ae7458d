"""The one backend registry of vmamba_mm's operators.

A backend is a name, what it supports (devices, dtypes, layouts, in-place
inference) and, per operator, the module that implements it. Both operators
(``selective_scan`` and ``cross_scan``/``cross_merge``) resolve their backend
here, each from its own choice:

1. the ``backend=`` argument (models: ``scan_backend=`` / ``cross_scan_backend=``),
2. else the operator's environment variable (:data:`ENV_VARS`),
3. else the device's default: 'triton' for CUDA tensors; for CPU tensors the
   selective scan's 'cpu' (the C++ kernel, built on first use) and 'torch' for
   cross-scan; 'torch' for every other device.

An unknown name, or one that cannot run the given tensors, raises an error that
lists the valid choices; nothing falls back silently (in particular a CUDA tensor
never lands on a slow path without being asked to). The one fallback: where the
C++ kernel cannot be built, the CPU default of the selective scan is 'torch',
announced by one warning that names the cause and the fix; asking for 'cpu'
explicitly there is an error.

Adding a backend: implement the operator entry points (see ``docs/ops.md``) in a
module and :func:`register_backend` it.
"""
import importlib
import os
import warnings
from dataclasses import dataclass

import torch

OPERATORS = ('selective_scan', 'cross_scan')
ENV_VARS = {'selective_scan': 'VMAMBA_MM_SCAN_BACKEND',
            'cross_scan': 'VMAMBA_MM_CROSS_SCAN_BACKEND'}
LAYOUTS = ('channel_major', 'time_major')
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """A registered backend.

    Attributes:
        name (str): the name users choose it by.
        modules (dict[str, str]): operator name -> module implementing it
            (imported on first use, so optional dependencies stay optional).
        devices (tuple[str]): device types it runs on.
        dtypes (tuple[torch.dtype]): input dtypes it takes.
        layouts (tuple[str]): sequence layouts it takes.
        inplace_inference (bool): computes in its own scratch memory in place when
            no gradient is needed (less memory traffic; no effect on results).
        requires (str, optional): the package it needs, named in errors.
        doc (str): one line for error messages and ``docs/ops.md``.
    """

    name: str
    modules: dict
    devices: tuple
    dtypes: tuple = FLOATS
    layouts: tuple = LAYOUTS
    inplace_inference: bool = False
    requires: str = None
    doc: str = ''

    def supports_device(self, device):
        if device.type in self.devices:
            return True
        # The Triton interpreter runs the kernels on CPU tensors (how CI tests them).
        return self.name == 'triton' and device.type == 'cpu' and triton_interpreted()

    def implementation(self, op):
        """The module implementing ``op`` (imported now; a clear error if it cannot be,
        or if the module's ``load_error()`` says it cannot run here)."""
        try:
            module = importlib.import_module(self.modules[op])
        except ImportError as e:
            raise ImportError(
                f"{op}: backend {self.name!r} needs the {self.requires or 'missing'} package "
                f"({e}); install it or choose another backend: {_choices(op)}") from e
        why = module.load_error() if hasattr(module, 'load_error') else None
        if why is not None:
            raise RuntimeError(f'{op}: {why}; backends: {_choices(op)}')
        return module


_REGISTRY = {}


def register_backend(backend):
    """Add a :class:`Backend` (its name must be new)."""
    if backend.name in _REGISTRY:
        raise ValueError(f'backend {backend.name!r} is already registered')
    unknown = set(backend.modules) - set(OPERATORS)
    if unknown:
        raise ValueError(f'backend {backend.name!r}: unknown operators {sorted(unknown)}; '
                         f'operators are {OPERATORS}')
    _REGISTRY[backend.name] = backend
    return backend


def backends(op=None):
    """The registered backends (of ``op`` if given), by name."""
    return {n: b for n, b in _REGISTRY.items() if op is None or op in b.modules}


def _choices(op):
    return ', '.join(f'{n!r} ({b.doc})' for n, b in backends(op).items())


def triton_interpreted():
    """Whether Triton kernels run through its interpreter (``TRITON_INTERPRET=1``),
    which takes CPU tensors (how the tests run them without a GPU)."""
    return os.environ.get('TRITON_INTERPRET') == '1'


def check_triton_device(fn, t):
    """Raise unless Triton kernels can run ``fn`` on ``t``'s device (CUDA, or CPU
    under the interpreter)."""
    if not t.is_cuda and not triton_interpreted():
        raise RuntimeError(f'{fn}: backend triton needs CUDA tensors '
                           f'(or TRITON_INTERPRET=1 to run the kernels on CPU)')


@torch.compiler.assume_constant_result
def _cpu_scan_default():
    """'cpu' where the C++ scan builds (building it now if needed), else 'torch' with
    one warning naming why (a constant for torch.compile: decided once, outside the
    graph)."""
    if 'cpu_scan_default' not in _DEFAULTS:
        why = importlib.import_module('vmamba_mm.ops.selective_scan.cpu').load_error()
        if why is not None:
            warnings.warn(f'{why}. Falling back to the slower pure-PyTorch scan (backend '
                          f"'torch'); set VMAMBA_MM_SCAN_BACKEND=torch to choose it explicitly "
                          f'and silence this warning.', RuntimeWarning, stacklevel=2)
        _DEFAULTS['cpu_scan_default'] = 'torch' if why else 'cpu'
    return _DEFAULTS['cpu_scan_default']


_DEFAULTS = {}


def default_backend(op, device):
    """The backend ``op`` runs on ``device`` when none is chosen."""
    if device.type == 'cuda':
        return 'triton'
    if op == 'selective_scan' and device.type == 'cpu':
        return _cpu_scan_default()
    return 'torch'


def resolve(op, backend, tensors, layout):
    """The :class:`Backend` that runs ``op`` on ``tensors`` (first one decides the device).

    Raises:
        ValueError: unknown backend or layout, or a device the backend does not run on.
        TypeError: a dtype the backend does not take.
        ImportError: the backend's package is missing.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'{op}: unknown layout {layout!r}; choose one of {LAYOUTS}')
    device = tensors[0].device
    env = ENV_VARS[op]
    name = backend or os.environ.get(env) or default_backend(op, device)
    how = (f'argument backend= (models: {"scan_backend" if op == "selective_scan" else "cross_scan_backend"}=) '
           f'or environment variable {env}')
    found = backends(op).get(name)
    if found is None:
        raise ValueError(f'{op}: unknown backend {name!r}; choose one of: {_choices(op)} ({how})')
    if not found.supports_device(device):
        extra = (' (or set TRITON_INTERPRET=1 to run the kernels on CPU, for tests)'
                 if name == 'triton' and device.type == 'cpu' else '')
        ok = [n for n, b in backends(op).items() if b.supports_device(device)]
        raise ValueError(f'{op}: backend {name!r} does not run on {device.type} tensors{extra}; '
                         f'backends for {device.type}: {ok} ({how})')
    for t in tensors:
        if t is not None and t.dtype not in found.dtypes:
            ok = [n for n, b in backends(op).items() if t.dtype in b.dtypes]
            raise TypeError(f'{op}: backend {name!r} takes {[str(d) for d in found.dtypes]}, '
                            f'got {t.dtype}; backends for {t.dtype}: {ok} ({how}), '
                            f'or cast the inputs')
    if layout not in found.layouts:
        raise ValueError(f'{op}: backend {name!r} takes layouts {found.layouts}, got {layout!r}')
    if not torch.compiler.is_compiling():
        found.implementation(op)  # import now: a missing package is an error here, not later
    return found


register_backend(Backend(
    'reference', {'selective_scan': 'vmamba_mm.ops.selective_scan.naive',
                  'cross_scan': 'vmamba_mm.ops.cross_scan.naive'},
    devices=('cpu', 'cuda', 'mps', 'xpu'),
    doc='per-step loop, the ground truth; slow'))
register_backend(Backend(
    'torch', {'selective_scan': 'vmamba_mm.ops.selective_scan.chunked',
              'cross_scan': 'vmamba_mm.ops.cross_scan.functions'},
    devices=('cpu', 'cuda', 'mps', 'xpu'), inplace_inference=True,
    doc='chunked PyTorch scan, any device; the CPU fallback'))
register_backend(Backend(
    'cpu', {'selective_scan': 'vmamba_mm.ops.selective_scan.cpu'},
    devices=('cpu', ), doc='fused C++ kernel, built on first use; the CPU default'))
register_backend(Backend(
    'triton', {'selective_scan': 'vmamba_mm.ops.selective_scan.kernels',
               'cross_scan': 'vmamba_mm.ops.cross_scan.kernels'},
    devices=('cuda', ), dtypes=(torch.float16, torch.bfloat16, torch.float32),
    requires='triton', doc='Triton kernels; the CUDA default'))
