import os

# Triton kernels run through the interpreter on CPU-only machines (CI).
# Must be set before triton compiles anything; a GPU machine runs them for real.
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault('TRITON_INTERPRET', '1')
except ImportError:  # pragma: no cover
    pass
