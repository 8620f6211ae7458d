"""Backend selection shared by the operators of vmamba_mm.ops."""
import os

BACKENDS = ('reference', 'torch', 'triton')
ENV_BACKEND = 'VMAMBA_MM_SCAN_BACKEND'


def pick_backend(fn, backend, t):
    """The backend for operator ``fn`` on tensor ``t``.

    ``backend`` if given, else the environment variable ``VMAMBA_MM_SCAN_BACKEND``,
    else 'triton' for CUDA tensors and 'torch' otherwise.
    """
    backend = backend or os.environ.get(ENV_BACKEND) or None
    if backend is None:
        return 'triton' if t.is_cuda else 'torch'
    if backend not in BACKENDS:
        raise ValueError(f'{fn}: unknown backend {backend!r}; choose one of {BACKENDS} '
                         f'(argument `backend` or environment variable {ENV_BACKEND})')
    return backend


def triton_interpreted():
    """Whether Triton kernels run through its interpreter (``TRITON_INTERPRET=1``),
    which takes CPU tensors (how the tests run them without a GPU)."""
    return os.environ.get('TRITON_INTERPRET') == '1'


def check_triton_device(fn, t):
    """Raise unless the 'triton' backend can run ``fn`` on ``t``'s device."""
    if not t.is_cuda and not triton_interpreted():
        raise RuntimeError(f'{fn}: backend triton needs CUDA tensors '
                           f'(or TRITON_INTERPRET=1 to run the kernels on CPU)')
