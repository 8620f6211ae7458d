"""Shared by the operator tests."""
import torch

from vmamba_mm.ops.backend import triton_interpreted

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def has_triton():
    """Whether the 'triton' backend can run here: triton installed, and a GPU or
    the interpreter (conftest.py sets TRITON_INTERPRET=1 on CPU-only machines)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or triton_interpreted()
