"""The shared selective-scan operator (Mamba-1 S6): one public function.

:func:`selective_scan` validates its arguments, resolves the backend
(:mod:`vmamba_mm.ops.backend`) and calls the registered operator
``torch.ops.vmamba_mm.selective_scan_fwd`` (:mod:`.op`). Backends: ``naive.py``
(the reference loop), ``chunked.py`` (the 'torch' backend), ``kernels.py``
(Triton).
"""
from .naive import selective_scan_naive
from .op import selective_scan, selective_scan_flops

__all__ = ['selective_scan', 'selective_scan_naive', 'selective_scan_flops']
