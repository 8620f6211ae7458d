"""VMamba cross-scan (4 directions) and cross-merge, one public function each.

Backends: 'reference' (naive.py, plain tensor ops), 'torch' (functions.py,
autograd Functions pairing scan and merge as adjoints) and 'triton'
(kernels.py). ``None`` picks the environment variable
``VMAMBA_MM_SCAN_BACKEND`` if set (it also drives ``selective_scan``), else
'triton' for CUDA tensors and 'torch' otherwise.
"""
import torch

from .naive import cross_merge_naive, cross_scan_naive
from ..backend import BACKENDS, ENV_BACKEND, pick_backend  # noqa: F401


def _check_float(fn, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{fn}: {name} must be a Tensor, got {type(t).__name__}')
    if not t.is_floating_point():
        raise TypeError(f'{fn}: {name} has dtype {t.dtype}; expected a floating dtype')


def _implementation(fn, backend, t):
    """The callable of ``fn`` ('cross_scan' or 'cross_merge') for the backend picked for ``t``."""
    backend = pick_backend(fn, backend, t)
    if backend == 'reference':
        return cross_scan_naive if fn == 'cross_scan' else cross_merge_naive
    if backend == 'torch':
        from .functions import CrossMerge, CrossScan
        return (CrossScan if fn == 'cross_scan' else CrossMerge).apply
    try:
        from .kernels import CrossMergeTriton, CrossScanTriton
    except ImportError as e:  # triton is optional: only this backend needs it
        raise ImportError(f"{fn} backend 'triton' needs the triton package ({e}); "
                          f"install triton or use backend='torch'") from e
    return (CrossScanTriton if fn == 'cross_scan' else CrossMergeTriton).apply


def cross_scan(x, backend=None):
    """Unfold a feature map into VMamba's four scan orders.

    Args:
        x (Tensor): (B, C, H, W).
        backend (str, optional): 'reference', 'torch' or 'triton' (see module doc).

    Returns:
        Tensor: (B, 4, C, H * W), the orders row-major, column-major, row-major
        reversed and column-major reversed.
    """
    _check_float('cross_scan', 'x', x)
    if x.dim() != 4:
        raise ValueError(f'cross_scan: x must be (B, C, H, W), got shape {tuple(x.shape)}')
    return _implementation('cross_scan', backend, x)(x)


def cross_merge(ys, backend=None):
    """Fold the four scan orders back onto the map and sum them.

    Args:
        ys (Tensor): (B, 4, C, H, W); ``ys[:, k]`` is direction k's sequence
            (in its scan order) viewed as (H, W).
        backend (str, optional): 'reference', 'torch' or 'triton' (see module doc).

    Returns:
        Tensor: (B, C, H, W).
    """
    _check_float('cross_merge', 'ys', ys)
    if ys.dim() != 5 or ys.shape[1] != 4:
        raise ValueError(f'cross_merge: ys must be (B, 4, C, H, W) (K = 4 directions), '
                         f'got shape {tuple(ys.shape)}')
    return _implementation('cross_merge', backend, ys)(ys)


__all__ = ['cross_scan', 'cross_merge', 'BACKENDS']
